//! Disjoint sets over ordered keys (union-find with path compression): values that must share one
//! parameter, such as a quantization scale across a Concat or a DLA range across an elementwise op.
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct Groups<T: Ord + Copy> {
    parent: BTreeMap<T, T>,
}

impl<T: Ord + Copy> Default for Groups<T> {
    fn default() -> Self {
        Groups { parent: BTreeMap::new() }
    }
}

impl<T: Ord + Copy> Groups<T> {
    /// The representative of `v`'s group (`v` joins the sets, alone, if it was not in them).
    pub fn root(&mut self, v: T) -> T {
        let mut r = v;
        while let Some(p) = self.parent.get(&r).copied().filter(|p| *p != r) {
            r = p;
        }
        let mut x = v;
        while let Some(p) = self.parent.get(&x).copied().filter(|p| *p != x) {
            self.parent.insert(x, r);
            x = p;
        }
        self.parent.insert(v, r);
        r
    }

    /// Put `a` and `b` in one group.
    pub fn union(&mut self, a: T, b: T) {
        let (ra, rb) = (self.root(a), self.root(b));
        if ra != rb {
            self.parent.insert(ra, rb);
        }
    }

    /// Put every member of `items` in one group.
    pub fn union_all(&mut self, items: &[T]) {
        for w in items.windows(2) {
            self.union(w[0], w[1]);
        }
    }

    pub fn contains(&self, v: &T) -> bool {
        self.parent.contains_key(v)
    }

    /// Every key in the sets.
    pub fn members(&self) -> Vec<T> {
        self.parent.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_merge_transitively() {
        let mut g = super::Groups::default();
        g.union_all(&[1, 2]);
        g.union_all(&[3, 4]);
        assert_ne!(g.root(1), g.root(3));
        g.union(2, 4);
        assert_eq!(g.root(1), g.root(3));
        assert!(g.contains(&4) && !g.contains(&5));
        assert_eq!(g.members(), vec![1, 2, 3, 4]);
    }
}
