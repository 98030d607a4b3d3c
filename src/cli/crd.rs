//! `issuelock crd`: the IssueLock CustomResourceDefinition as YAML.

use crate::error::Error;
use std::process::ExitCode;

pub(super) fn crd() -> Result<ExitCode, Error> {
    print!("{}", crate::crd::definition_yaml());
    Ok(ExitCode::SUCCESS)
}
