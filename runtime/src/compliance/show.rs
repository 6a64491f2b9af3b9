//! `test-plugin --show`: the samples through one initialised instance as one batch, and what
//! the plugin answered for each, so an author sees what a transform makes of a payload (or
//! what a sink says of it) without building a pipeline.

use super::*;

/// A payload as one line of text: UTF-8 as it is (control characters escaped), anything else
/// as its bytes in hex.
fn text(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(t) => t
            .chars()
            .map(|c| match c.is_control() {
                true => c.escape_default().to_string(),
                false => c.to_string(),
            })
            .collect(),
        Err(_) => format!(
            "0x{}",
            payload
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
    }
}

/// A message's key and headers, when it has any: ` (key k1, content-type: application/json)`.
fn extras(message: &Message) -> String {
    let mut parts = Vec::new();
    if let Some(key) = &message.key {
        parts.push(format!("key {}", text(key)));
    }
    for h in &message.headers {
        parts.push(format!("{}: {}", h.name, text(h.value.as_bytes())));
    }
    match parts.is_empty() {
        true => String::new(),
        false => format!(" ({})", parts.join(", ")),
    }
}

/// The lines `--show` prints: each sample, then the plugin's answer for it. The samples are
/// sent as they are, without keys or headers.
pub async fn show(runtime: &Runtime, options: &Options) -> anyhow::Result<Vec<String>> {
    let loaded = runtime.load(&options.path, None)?;
    let role = loaded.role;
    let call = match role {
        Role::Transform => "process",
        Role::Sink => "write",
        Role::Source => anyhow::bail!(
            "--show sends the samples to a transform or a sink; this plugin is a source"
        ),
    };
    let samples = options.input.clone().unwrap_or_else(default_samples);
    let subject = Subject {
        runtime,
        loaded,
        options,
        label: Arc::from("test-plugin"),
    };
    let mut instance = subject
        .ready_for(samples.len())
        .await
        .map_err(anyhow::Error::msg)?;
    let batch: Vec<Message> = samples
        .iter()
        .map(|payload| Message {
            payload: payload.clone(),
            key: None,
            headers: Vec::new(),
            timestamp: None,
        })
        .collect();
    let answers: Vec<String> = if role == Role::Transform {
        let outcomes = instance
            .process(&batch)
            .await
            .map_err(|trap| anyhow::anyhow!("{}", trapped(&trap)))?;
        outcomes
            .iter()
            .map(|o| match o {
                Outcome::Keep => "kept unchanged".to_owned(),
                Outcome::Drop => "dropped".to_owned(),
                Outcome::Replace(out) if out.is_empty() => "replaced by nothing".to_owned(),
                Outcome::Replace(out) => out
                    .iter()
                    .map(|m| format!("{}{}", text(&m.payload), extras(m)))
                    .collect::<Vec<_>>()
                    .join("\n       → "),
                Outcome::Fail(e) => crate::contract::describe(e),
            })
            .collect()
    } else {
        let results = instance
            .write(&batch)
            .await
            .map_err(|trap| anyhow::anyhow!("{}", trapped(&trap)))?;
        results
            .iter()
            .map(|r| match r {
                Ok(()) => "written".to_owned(),
                Err(e) => crate::contract::describe(e),
            })
            .collect()
    };
    let mut lines = vec![format!(
        "{} sample{} through `{call}` as one batch:",
        samples.len(),
        plural(samples.len())
    )];
    if answers.len() != samples.len() {
        lines.push(format!(
            "  the plugin gave {} answers for {} messages (a broken contract: see the checks)",
            answers.len(),
            samples.len()
        ));
    }
    for (n, (sample, answer)) in samples.iter().zip(&answers).enumerate() {
        lines.push(format!("  {:>3}  {}", n + 1, text(sample)));
        lines.push(format!("       → {answer}"));
    }
    Ok(lines)
}
