//! The metric keys the training stages log, and parsing of the per-layer ones.

/// Scalar per-step training metrics, in display order.
pub(crate) const SCALAR_KEYS: [&str; 7] = [
    "loss",
    "aux_loss",
    "z_loss",
    "grad_norm",
    "lr",
    "tokens_per_s",
    "mfu",
];

/// A per-MoE-layer metric key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LayerKey {
    /// `expert_load/L{layer}/E{expert}`: tokens routed to the expert.
    ExpertLoad { layer: u32, expert: u32 },
    /// `router_entropy/L{layer}`.
    RouterEntropy { layer: u32 },
    /// `dead_experts/L{layer}`.
    DeadExperts { layer: u32 },
}

/// Parses `expert_load/L3/E12`, `router_entropy/L3`, `dead_experts/L3`; anything else is `None`.
pub(crate) fn parse_layer_key(key: &str) -> Option<LayerKey> {
    if let Some(rest) = key.strip_prefix("expert_load/L") {
        let (layer, expert) = rest.split_once("/E")?;
        return Some(LayerKey::ExpertLoad {
            layer: layer.parse().ok()?,
            expert: expert.parse().ok()?,
        });
    }
    if let Some(layer) = key.strip_prefix("router_entropy/L") {
        return Some(LayerKey::RouterEntropy {
            layer: layer.parse().ok()?,
        });
    }
    if let Some(layer) = key.strip_prefix("dead_experts/L") {
        return Some(LayerKey::DeadExperts {
            layer: layer.parse().ok()?,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_layer_keys() {
        assert_eq!(
            parse_layer_key("expert_load/L3/E12"),
            Some(LayerKey::ExpertLoad {
                layer: 3,
                expert: 12
            })
        );
        assert_eq!(
            parse_layer_key("router_entropy/L0"),
            Some(LayerKey::RouterEntropy { layer: 0 })
        );
        assert_eq!(
            parse_layer_key("dead_experts/L11"),
            Some(LayerKey::DeadExperts { layer: 11 })
        );
        assert_eq!(parse_layer_key("expert_load/L3"), None);
        assert_eq!(parse_layer_key("expert_load/Lx/E1"), None);
        assert_eq!(parse_layer_key("loss"), None);
    }
}
