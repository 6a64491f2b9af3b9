// Shared source of `tagger-v1` and `tagger-v2` (test only), which differ in their crate version.
//
// Each JSON record gets `tag` ("v1"/"v2": which code processed it), `batch` (the `seq` of the
// first record of the batch it came in: records of one batch must carry one tag), and `n`, a
// counter kept in the host's `state` interface across instances and versions (state written by
// v1 must be read by v2: `n` never restarts), and `t`, the wall-clock time in microseconds when
// the batch was processed (the benchmark measures swap pauses with it).

use patchbay_sdk::json::{self, Value};
use patchbay_sdk::{Config, ConfigKey, Error, Message, Metadata, Outcome, Transform, state};

struct Tagger {
    tag: String,
}

impl Transform for Tagger {
    fn metadata() -> Metadata {
        Metadata::new(
            "tagger",
            env!("CARGO_PKG_VERSION"),
            "Test only: tags records with the version that processed them.",
        )
        .key(ConfigKey::optional(
            "attack",
            "Ignored; lets a test hand the same config to test-hostile on a swap.",
            "none",
        ))
    }

    fn init(_config: Config) -> Result<Self, Error> {
        let major = env!("CARGO_PKG_VERSION").split('.').next().unwrap_or("0");
        Ok(Tagger {
            tag: format!("v{major}"),
        })
    }

    fn process(&mut self, message: &Message) -> Outcome {
        self.process_batch(vec![message.clone()])
            .pop()
            .unwrap_or(Outcome::Keep)
    }

    fn process_batch(&mut self, batch: Vec<Message>) -> Vec<Outcome> {
        let mut n: u64 = state::get("n")
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let first = batch
            .first()
            .and_then(|m| serde_json::from_slice::<Value>(&m.payload).ok())
            .and_then(|v| json::get(&v, "seq").cloned())
            .unwrap_or(Value::Null);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let outcomes = batch
            .into_iter()
            .map(|mut m| {
                let Ok(mut v) = serde_json::from_slice::<Value>(&m.payload) else {
                    return Outcome::Fail(Error::invalid_data("not JSON"));
                };
                n += 1;
                let _ = json::set(&mut v, "tag", Value::String(self.tag.clone()));
                let _ = json::set(&mut v, "batch", first.clone());
                let _ = json::set(&mut v, "n", Value::from(n));
                let _ = json::set(&mut v, "t", Value::from(now));
                m.payload = v.to_string().into_bytes();
                Outcome::Replace(vec![m])
            })
            .collect();
        if let Err(e) = state::set("n", n.to_string().as_bytes()) {
            patchbay_sdk::log::error(&format!("cannot keep the counter: {e}"));
        }
        outcomes
    }
}

patchbay_sdk::export_transform!(Tagger);
