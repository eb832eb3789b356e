//! Node attributes in IR form. Tensors and subgraphs are IR objects; the rare kinds no pass reasons about
//! (sparse tensors, type protos, attribute references inside functions) are kept as encoded ONNX bytes.
use super::{Graph, TensorData};

/// One attribute value.
#[derive(Clone, Debug)]
pub enum AttrValue {
    Float(f32),
    Int(i64),
    String(Vec<u8>),
    Tensor(TensorData),
    Graph(Box<Graph>),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<Vec<u8>>),
    Tensors(Vec<TensorData>),
    Graphs(Vec<Graph>),
    /// A whole encoded `AttributeProto` kiln does not interpret.
    Opaque(Vec<u8>),
}

/// A named attribute.
#[derive(Clone, Debug)]
pub struct Attribute {
    pub name: String,
    pub value: AttrValue,
    pub doc: String,
    /// Names of the tensors of a TENSOR/TENSORS attribute, as the model wrote them.
    pub tensor_names: Vec<String>,
}

impl Attribute {
    pub fn new(name: &str, value: AttrValue) -> Self {
        Attribute { name: name.into(), value, doc: String::new(), tensor_names: Vec::new() }
    }
    pub fn int(name: &str, v: i64) -> Self {
        Self::new(name, AttrValue::Int(v))
    }
    pub fn float(name: &str, v: f32) -> Self {
        Self::new(name, AttrValue::Float(v))
    }
    pub fn ints(name: &str, v: Vec<i64>) -> Self {
        Self::new(name, AttrValue::Ints(v))
    }
    pub fn string(name: &str, v: &str) -> Self {
        Self::new(name, AttrValue::String(v.as_bytes().to_vec()))
    }
}

/// Reads attributes by name and remembers which were used, so a typed op can refuse (and stay generic)
/// when a model carries an attribute it does not model.
pub struct AttrReader<'a> {
    attrs: &'a [Attribute],
    used: Vec<bool>,
    ok: bool,
}

impl<'a> AttrReader<'a> {
    pub fn new(attrs: &'a [Attribute]) -> Self {
        AttrReader { attrs, used: vec![false; attrs.len()], ok: true }
    }

    fn take(&mut self, name: &str) -> Option<&'a AttrValue> {
        let i = self.attrs.iter().position(|a| a.name == name)?;
        self.used[i] = true;
        if !self.attrs[i].doc.is_empty() {
            self.ok = false; // doc strings on attributes are kept by the generic form only
        }
        Some(&self.attrs[i].value)
    }

    pub fn int(&mut self, name: &str) -> Option<i64> {
        match self.take(name) {
            Some(AttrValue::Int(v)) => Some(*v),
            Some(_) => {
                self.ok = false;
                None
            }
            None => None,
        }
    }

    pub fn float(&mut self, name: &str) -> Option<f32> {
        match self.take(name) {
            Some(AttrValue::Float(v)) => Some(*v),
            Some(_) => {
                self.ok = false;
                None
            }
            None => None,
        }
    }

    pub fn ints(&mut self, name: &str) -> Option<Vec<i64>> {
        match self.take(name) {
            Some(AttrValue::Ints(v)) => Some(v.clone()),
            Some(_) => {
                self.ok = false;
                None
            }
            None => None,
        }
    }

    pub fn string(&mut self, name: &str) -> Option<String> {
        match self.take(name) {
            Some(AttrValue::String(v)) => match String::from_utf8(v.clone()) {
                Ok(s) => Some(s),
                Err(_) => {
                    self.ok = false;
                    None
                }
            },
            Some(_) => {
                self.ok = false;
                None
            }
            None => None,
        }
    }

    /// True when every attribute was read with its expected kind.
    pub fn finish(self) -> bool {
        self.ok && self.used.iter().all(|u| *u)
    }

    /// True when every attribute read had its expected kind (unread ones allowed).
    pub fn finish_lenient(self) -> bool {
        self.ok
    }
}

/// Builds an attribute list from optional typed fields (absent fields are not written).
#[derive(Default)]
pub struct AttrWriter(pub Vec<Attribute>);

impl AttrWriter {
    pub fn int(mut self, name: &str, v: Option<i64>) -> Self {
        if let Some(v) = v {
            self.0.push(Attribute::int(name, v));
        }
        self
    }
    pub fn float(mut self, name: &str, v: Option<f32>) -> Self {
        if let Some(v) = v {
            self.0.push(Attribute::float(name, v));
        }
        self
    }
    pub fn ints(mut self, name: &str, v: &Option<Vec<i64>>) -> Self {
        if let Some(v) = v {
            self.0.push(Attribute::ints(name, v.clone()));
        }
        self
    }
    pub fn string(mut self, name: &str, v: &Option<String>) -> Self {
        if let Some(v) = v {
            self.0.push(Attribute::string(name, v));
        }
        self
    }
}
