//! The activation memory plan: every arena buffer lives from the first step that touches it to the last
//! (inputs from the start, outputs to the end); buffers whose lifetimes do not overlap share memory.
//! Placement is greedy by size (largest first, each at the lowest offset free for its whole lifetime),
//! the strategy TFLite's arena planner uses. A step's output never shares memory with its inputs.
use super::lower::Draft;

/// Buffers are placed at multiples of this many elements (16 bytes).
const ALIGN: u64 = 4;

pub struct Placement {
    /// Offset of each buffer in the arena (elements).
    pub offsets: Vec<u64>,
    /// Arena size (elements).
    pub arena: u64,
    /// The largest sum of simultaneously live buffers (elements).
    pub peak: u64,
}

/// Lifetime [first, last] step of each buffer.
fn lifetimes(
    n_bufs: usize,
    steps: &[Draft],
    inputs: &[u32],
    outputs: &[u32],
) -> Vec<(usize, usize)> {
    let mut life = vec![(usize::MAX, 0usize); n_bufs];
    for (i, s) in steps.iter().enumerate() {
        for &b in s.reads.iter().chain(&s.writes) {
            let l = &mut life[b as usize];
            l.0 = l.0.min(i);
            l.1 = l.1.max(i);
        }
    }
    for &b in inputs {
        life[b as usize].0 = 0;
    }
    for &b in outputs {
        life[b as usize].1 = steps.len();
    }
    for l in &mut life {
        if l.0 == usize::MAX {
            *l = (0, 0);
        }
        l.1 = l.1.max(l.0);
    }
    life
}

pub fn place(bufs: &[u64], steps: &[Draft], inputs: &[u32], outputs: &[u32]) -> Placement {
    let life = lifetimes(bufs.len(), steps, inputs, outputs);
    let size = |b: usize| bufs[b].div_ceil(ALIGN) * ALIGN;
    let mut order: Vec<usize> = (0..bufs.len()).collect();
    order.sort_by(|a, b| size(*b).cmp(&size(*a)).then(life[*a].0.cmp(&life[*b].0)));
    let mut offsets = vec![0u64; bufs.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut arena = 0u64;
    for b in order {
        let (f, l) = life[b];
        let mut busy: Vec<(u64, u64)> = placed
            .iter()
            .filter(|o| life[**o].0 <= l && f <= life[**o].1)
            .map(|o| (offsets[*o], offsets[*o] + size(*o)))
            .collect();
        busy.sort();
        let mut at = 0u64;
        for (s, e) in busy {
            if s >= at + size(b) {
                break;
            }
            at = at.max(e);
        }
        offsets[b] = at;
        arena = arena.max(at + size(b));
        placed.push(b);
    }
    let span = steps.len() + 1;
    let mut live = vec![0u64; span];
    for (b, (f, l)) in life.iter().enumerate() {
        for t in live.iter_mut().take(*l + 1).skip(*f) {
            *t += bufs[b];
        }
    }
    Placement { offsets, arena, peak: live.into_iter().max().unwrap_or(0) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vulkan::kernels::Kernel;

    fn step(reads: &[u32], writes: &[u32]) -> Draft {
        Draft {
            kernel: Kernel::Copy,
            words: vec![],
            threads: 1,
            groups: None,
            node: String::new(),
            op: String::new(),
            reads: reads.to_vec(),
            writes: writes.to_vec(),
        }
    }

    #[test]
    fn chain_reuses_memory_and_never_overlaps_live_buffers() {
        // x → a → b → c → y: at most two buffers live at a time.
        let bufs = [100, 100, 100, 100, 100];
        let steps = [step(&[0], &[1]), step(&[1], &[2]), step(&[2], &[3]), step(&[3], &[4])];
        let p = place(&bufs, &steps, &[0], &[4]);
        assert_eq!(p.peak, 200);
        assert_eq!(p.arena, 200);
        let life = lifetimes(5, &steps, &[0], &[4]);
        for a in 0..5 {
            for b in 0..a {
                let overlap_t = life[a].0 <= life[b].1 && life[b].0 <= life[a].1;
                let overlap_m =
                    p.offsets[a] < p.offsets[b] + 100 && p.offsets[b] < p.offsets[a] + 100;
                assert!(!(overlap_t && overlap_m), "buffers {a} and {b} collide");
            }
        }
    }
}
