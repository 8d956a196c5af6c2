//! `cairn serve`: wire the authorities together and run the listeners.

use crate::config::Config;

pub async fn run(_cfg: Config) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
