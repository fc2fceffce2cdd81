//! Where a layer's weights live in each dialect, behind one lookup.
//!
//! Keras 3 (`.keras` archives and `*.weights.h5`) nests groups: `layers/<key>/vars/<i>`,
//! where `<key>` is the class name in snake_case with a counter, and the `vars` group
//! carries the layer's `name`. Legacy `.h5` files keep one flat, named list per top-level
//! layer; a nested model's list holds all its sublayers' weights, which in Keras 2 come
//! trainable first, so sublayers are matched by the names in the list, not by position.

use super::hdf5::{self, Budget, Tensor};
use crate::bail;
use crate::error::{Error, Result};
use hdf5_reader::group::Group;
use std::collections::{BTreeMap, HashMap};

/// One group of a Keras 3 weights file, with its own variables and sub-groups.
#[derive(Debug, Default, Clone)]
pub struct Node {
    /// The layer name stored on the `vars` group, when present.
    pub name: Option<String>,
    /// The variables in `vars/0`, `vars/1`, ... order.
    pub vars: Vec<Tensor>,
    /// Sub-groups by key (`layers`, `cell`, `dense`, ...).
    pub children: BTreeMap<String, Node>,
}

/// All weights of a model file.
#[derive(Debug, Clone)]
pub enum WeightStore {
    /// Keras 3 layout, rooted at the model.
    Tree(Node),
    /// Legacy layout: each top-level layer's weights, in order, by layer name.
    Legacy(HashMap<String, Vec<Tensor>>),
}

const MAX_DEPTH: usize = 32;

/// Reads a Keras 3 weights file (the `model.weights.h5` of a `.keras`, or `save_weights`).
pub fn read_tree(root: &Group, budget: &mut Budget) -> Result<Node> {
    read_node(root, budget, 0)
}

fn read_node(group: &Group, budget: &mut Budget, depth: usize) -> Result<Node> {
    if depth > MAX_DEPTH {
        bail!(
            "weights nest deeper than {MAX_DEPTH} groups at `{}`",
            group.name()
        );
    }
    let mut node = Node::default();
    let (groups, _) = hdf5::members(group)?;
    for key in groups {
        let child = hdf5::group_at(group, &key)?;
        if key == "vars" {
            node.name = hdf5::attr_string(&child, "name")?;
            let (_, datasets) = hdf5::members(&child)?;
            let mut indexed = Vec::with_capacity(datasets.len());
            for ds in datasets {
                let index: usize = ds.parse().map_err(|_| {
                    Error::new(format!(
                        "weight `{}/vars/{ds}` is not numbered",
                        group.name()
                    ))
                })?;
                indexed.push((index, hdf5::read_f32(&child, &ds, budget)?));
            }
            indexed.sort_by_key(|(i, _)| *i);
            if indexed.iter().enumerate().any(|(pos, (i, _))| pos != *i) {
                bail!(
                    "weights under `{}/vars` are not numbered 0..{}",
                    group.name(),
                    indexed.len()
                );
            }
            node.vars = indexed.into_iter().map(|(_, t)| t).collect();
        } else {
            node.children
                .insert(key, read_node(&child, budget, depth + 1)?);
        }
    }
    Ok(node)
}

/// Reads a legacy weights group (`model_weights` of a model file, or the root of a
/// Keras 2 `save_weights` file).
pub fn read_legacy(group: &Group, budget: &mut Budget) -> Result<HashMap<String, Vec<Tensor>>> {
    let layer_names = hdf5::attr_strings(group, "layer_names")?
        .ok_or_else(|| Error::new("legacy weights have no `layer_names` attribute".to_string()))?;
    let mut out = HashMap::new();
    for layer in layer_names {
        let layer_group = hdf5::group_at(group, &layer)
            .map_err(|e| Error::new(format!("weights of layer `{layer}`: {}", e.message)))?;
        let names = hdf5::attr_strings(&layer_group, "weight_names")?.unwrap_or_default();
        let mut tensors = Vec::with_capacity(names.len());
        for name in names {
            let (parent, leaf) = name.rsplit_once('/').unwrap_or(("", &name));
            let parent_group = hdf5::group_at(&layer_group, parent).map_err(|e| {
                Error::new(format!("weight `{name}` of layer `{layer}`: {}", e.message))
            })?;
            let mut t = hdf5::read_f32(&parent_group, leaf, budget)?;
            t.name = name;
            tensors.push(t);
        }
        out.insert(layer, tensors);
    }
    Ok(out)
}

/// Where to look up the layers of one (possibly nested) model.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// A model node in the Keras 3 layout.
    Tree(&'a Node),
    /// The top level of a legacy file.
    Legacy(&'a HashMap<String, Vec<Tensor>>),
    /// A nested model in a legacy file: its sublayers' weights, matched by name.
    Flat(&'a [Tensor]),
    /// A model without weights (a config on its own).
    Empty,
}

/// A layer's weights, found in a [`Scope`].
#[derive(Debug, Clone, Default)]
pub struct Found<'a> {
    /// The layer's own variables, in Keras's order.
    pub vars: Vec<&'a Tensor>,
    /// The layer's node in the Keras 3 layout, for layers that hold sublayers.
    pub node: Option<&'a Node>,
    /// For a legacy nested model: the whole list its sublayers draw from.
    pub flat: Option<&'a [Tensor]>,
}

impl<'a> Scope<'a> {
    /// The weights of the layer called `name`, whose Keras 3 key would be `key`.
    pub fn find(&self, name: &str, key: &str) -> Found<'a> {
        match *self {
            Scope::Tree(model) => {
                let Some(layers) = model.children.get("layers") else {
                    return Found::default();
                };
                let node = layers
                    .children
                    .values()
                    .find(|n| n.name.as_deref() == Some(name))
                    .or_else(|| layers.children.get(key));
                let mut vars = Vec::new();
                if let Some(n) = node {
                    gather(n, &mut vars);
                }
                Found {
                    vars,
                    node,
                    flat: None,
                }
            }
            Scope::Legacy(map) => {
                let list = map.get(name).map(Vec::as_slice).unwrap_or_default();
                Found {
                    vars: list.iter().collect(),
                    node: None,
                    flat: Some(list),
                }
            }
            Scope::Flat(list) => {
                let matching: Vec<&Tensor> = list
                    .iter()
                    .filter(|t| {
                        let parts: Vec<&str> = t.name.split('/').collect();
                        parts[..parts.len().saturating_sub(1)].contains(&name)
                    })
                    .collect();
                Found {
                    vars: matching,
                    node: None,
                    flat: Some(list),
                }
            }
            Scope::Empty => Found::default(),
        }
    }

    /// The scope for a nested model's own layers, given what [`Scope::find`] returned.
    pub fn nested(&self, found: &Found<'a>) -> Scope<'a> {
        match (self, found.node) {
            (Scope::Empty, _) => Scope::Empty,
            (_, Some(node)) => Scope::Tree(node),
            _ => Scope::Flat(found.flat.unwrap_or_default()),
        }
    }
}

/// A layer's variables and those of the sublayers it wraps (an RNN's `cell`, a
/// Bidirectional's `forward_layer` then `backward_layer`), in the order legacy files
/// list them; a nested model's `layers` are its own business.
fn gather<'a>(node: &'a Node, out: &mut Vec<&'a Tensor>) {
    out.extend(node.vars.iter());
    let mut keys: Vec<&String> = node.children.keys().filter(|k| *k != "layers").collect();
    keys.sort_by_key(|k| (k.as_str() != "forward_layer", k.as_str()));
    for k in keys {
        gather(&node.children[k], out);
    }
}

/// Keras 3's key for a layer: its class name in snake_case, with `_<n>` from the second
/// layer of that class in the same parent onward.
pub fn snake_case(class: &str) -> String {
    let mut out = String::with_capacity(class.len() + 4);
    let chars: Vec<char> = class.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            // Keras: `(.)([A-Z][a-z]+)` -> `\1_\2`, then `([a-z])([A-Z])` -> `\1_\2`.
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            let prev_lower = i > 0 && chars[i - 1].is_ascii_lowercase();
            if i > 0 && (next_lower || prev_lower) {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::snake_case;

    #[test]
    fn snake_case_matches_keras_keys() {
        assert_eq!(snake_case("Dense"), "dense");
        assert_eq!(snake_case("BatchNormalization"), "batch_normalization");
        assert_eq!(snake_case("Conv2D"), "conv2d");
        assert_eq!(snake_case("Conv2DTranspose"), "conv2d_transpose");
        assert_eq!(snake_case("PReLU"), "p_re_lu");
        assert_eq!(
            snake_case("GlobalAveragePooling2D"),
            "global_average_pooling2d"
        );
    }
}
