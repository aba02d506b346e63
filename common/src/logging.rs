//! Log set-up shared by the binaries: `tracing` to stderr, plain or JSON, filtered by
//! `RUST_LOG` (default `info`).

use serde::{Deserialize, Serialize};

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The name the binaries' `--log-format` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Plain => "plain",
            LogFormat::Json => "json",
        }
    }
}

/// Installs the global subscriber (once; later calls are ignored).
pub fn init(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colours only on a terminal: logs redirected to files stay greppable.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::LogFormat;
    use clap::ValueEnum;

    #[test]
    fn names_are_the_flags_values() {
        for f in LogFormat::value_variants() {
            assert_eq!(LogFormat::from_str(f.as_str(), false), Ok(*f));
        }
    }
}
