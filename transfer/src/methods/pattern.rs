//! Which layers a job names: parameter-name patterns with `*`, or the first / last K layers.

use crate::model::Architecture;

/// One entry of `method.freeze`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerPattern {
    /// Parameter names matching a pattern where `*` stands for any run of characters
    /// (`features.*`, `label_head.fc1.weight`).
    Glob(String),
    /// The first K layers of the network (trunk first, then the label head).
    First(usize),
    /// The last K layers.
    Last(usize),
}

impl LayerPattern {
    /// Reads `first:K`, `last:K` or a name pattern.
    ///
    /// # Errors
    /// The reason, for an empty pattern or a bad count.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        let count = |k: &str| -> Result<usize, String> {
            match k.parse::<usize>() {
                Ok(0) | Err(_) => Err(format!("{s:?}: the count must be a whole number > 0")),
                Ok(n) => Ok(n),
            }
        };
        if let Some(k) = s.strip_prefix("first:") {
            return Ok(Self::First(count(k)?));
        }
        if let Some(k) = s.strip_prefix("last:") {
            return Ok(Self::Last(count(k)?));
        }
        if s.chars().any(char::is_whitespace) {
            return Err(format!("{s:?}: a name pattern has no spaces"));
        }
        Ok(Self::Glob(s.to_string()))
    }

    /// Which parameters of `arch` it selects.
    pub fn mask(&self, arch: &Architecture) -> Vec<bool> {
        let layers = arch.layer_names();
        let chosen: &[String] = match self {
            Self::Glob(_) => &[],
            Self::First(k) => &layers[..(*k).min(layers.len())],
            Self::Last(k) => &layers[layers.len().saturating_sub(*k)..],
        };
        arch.params
            .iter()
            .map(|p| match self {
                Self::Glob(g) => glob(g, &p.name),
                _ => chosen.iter().any(|l| {
                    p.name
                        .strip_prefix(l.as_str())
                        .is_some_and(|r| r.starts_with('.'))
                }),
            })
            .collect()
    }
}

/// Whether `name` matches `pattern`, `*` matching any run of characters.
fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// The union of the masks of `patterns`.
pub fn union_mask(arch: &Architecture, patterns: &[LayerPattern]) -> Vec<bool> {
    let mut m = vec![false; arch.params.len()];
    for p in patterns {
        for (a, b) in m.iter_mut().zip(p.mask(arch)) {
            *a |= b;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ModelSpec;

    #[test]
    fn patterns_select_layers() {
        let a = Architecture::new(&ModelSpec::DigitsCnn {}, &[1, 28, 28], 10).expect("valid");
        let names = |m: Vec<bool>| -> Vec<String> {
            a.params
                .iter()
                .zip(m)
                .filter(|(_, s)| *s)
                .map(|(p, _)| p.name.clone())
                .collect()
        };
        let f = LayerPattern::parse("features.*").expect("ok");
        assert_eq!(names(f.mask(&a)).len(), 4);
        let l = LayerPattern::parse("last:1").expect("ok");
        assert_eq!(
            names(l.mask(&a)),
            vec!["label_head.fc3.weight", "label_head.fc3.bias"]
        );
        let first = LayerPattern::parse("first:3").expect("ok");
        assert_eq!(names(first.mask(&a)).len(), 6);
        let one = LayerPattern::parse("*.conv1.weight").expect("ok");
        assert_eq!(names(one.mask(&a)), vec!["features.conv1.weight"]);
        assert!(LayerPattern::parse("last:0").is_err());
        assert!(LayerPattern::parse("first:x").is_err());
        assert!(LayerPattern::parse(" ").is_err());
    }
}
