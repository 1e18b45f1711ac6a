//! `rtbackup-server claim`: give a volume to a client.

use super::{give_volume, VolumeArgs};

/// Give a volume to a client: one from before volumes had owners (no
/// client's HELLO takes it), or a name reserved before its first
/// stream. A volume another client owns is refused.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    vol: VolumeArgs,
    /// The client that gets it.
    client: String,
}

impl Args {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self {
            vol: VolumeArgs { store, volume },
            client,
        } = self;
        rtbackup_tls::validate_client_name(&client)?;
        give_volume(&store, &volume, &client)?;
        println!("volume {volume} belongs to client {client}");
        Ok(())
    }
}
