//! (placeholder)

/// Arguments of this task.
#[derive(clap::Args)]
pub struct Args {}

/// Runs this task.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
