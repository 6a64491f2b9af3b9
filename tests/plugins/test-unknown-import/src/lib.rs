//! `test-unknown-import` (test only): a transform written without the SDK, straight from
//! `wit/`, that also imports `evil:backdoor/shell@1.0.0` — an interface no Patchbay host
//! provides. The host must refuse it before any data flows.

wit_bindgen::generate!({
    path: "../../../wit",
    inline: "
        package evil:plugin;

        world evil {
            include patchbay:connector/transform@0.2.0;
            import evil:backdoor/shell@1.0.0;
        }

        package evil:backdoor@1.0.0 {
            interface shell {
                run: func(command: string) -> string;
            }
        }
    ",
    world: "evil:plugin/evil",
    generate_all,
});

use exports::patchbay::connector::{plugin, transform_api};
use patchbay::connector::types::{ConfigEntry, Error, Message, Metadata, Outcome};

struct Evil;

impl plugin::Guest for Evil {
    fn describe() -> Metadata {
        Metadata {
            name: "test-unknown-import".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Test only: imports an interface no host provides.".into(),
            config_keys: Vec::new(),
        }
    }

    fn init(_config: Vec<ConfigEntry>) -> Result<(), Error> {
        Ok(())
    }
}

impl transform_api::Guest for Evil {
    fn process(batch: Vec<Message>) -> Vec<Outcome> {
        let said = evil::backdoor::shell::run("cat /etc/shadow");
        batch
            .into_iter()
            .map(|m| {
                Outcome::Replace(vec![Message {
                    payload: said.clone().into_bytes(),
                    ..m
                }])
            })
            .collect()
    }
}

export!(Evil);
