//! The file's small top-level tables, checked: `[admin]` and `[telemetry]`.

use toml::Spanned;

use super::TelemetryDecl;
use super::diagnostic::{Diagnostic, Locator};
use super::raw::{RawAdmin, RawTelemetry};

/// `[admin] listen`: an address.
pub(super) fn admin(
    raw: Option<&RawAdmin>,
    locator: &Locator,
    problems: &mut Vec<Diagnostic>,
) -> Option<std::net::SocketAddr> {
    let listen: &Spanned<String> = &raw?.listen;
    match listen.get_ref().parse::<std::net::SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.push(
                Diagnostic::new(
                    locator.at(listen),
                    format!("[admin] listen = `{}` is not an address", listen.get_ref()),
                )
                .hint("write IP:PORT, e.g. \"127.0.0.1:7400\""),
            );
            None
        }
    }
}

/// `[telemetry]`: an `http://` collector address and a ratio.
pub(super) fn telemetry(
    raw: Option<RawTelemetry>,
    locator: &Locator,
    problems: &mut Vec<Diagnostic>,
) -> Option<TelemetryDecl> {
    let raw = raw?;
    let otlp = raw.otlp.get_ref().trim().to_owned();
    let host = otlp
        .strip_prefix("http://")
        .map(|rest| rest.split('/').next().unwrap_or(""));
    let mut ok = true;
    match host {
        Some(host) if !host.is_empty() => {}
        _ => {
            ok = false;
            problems.push(
                Diagnostic::new(
                    locator.at(&raw.otlp),
                    format!("[telemetry] otlp = `{otlp}` is not an http:// address"),
                )
                .hint(
                    "give the OTLP/HTTP address of a collector, e.g. \"http://127.0.0.1:4318\" \
                     (https is not supported: run a local collector or agent)",
                ),
            );
        }
    }
    let sample = match &raw.sample {
        None => 1.0,
        Some(s) if (0.0..=1.0).contains(s.get_ref()) => *s.get_ref(),
        Some(s) => {
            ok = false;
            problems.push(
                Diagnostic::new(
                    locator.at(s),
                    format!("[telemetry] sample = {} is out of range", s.get_ref()),
                )
                .hint("give the share of new traces to record, from 0 to 1 (e.g. 0.1)"),
            );
            1.0
        }
    };
    ok.then(|| TelemetryDecl {
        otlp,
        sample,
        service: raw.service.unwrap_or_else(|| "patchbay".to_owned()),
    })
}
