//! `vmnetd apply FILE`, `vmnetd config dump` and SIGHUP: the config file's declarations
//! changed while the daemon runs, with the least disruption.

use crate::api::{ApiError, ApplyReq, ApplyResult, ConfigDump, ErrorKind};

use super::core::Core;

impl Core {
    pub async fn datapath_stats(&self) -> Result<crate::api::DatapathStats, ApiError> {
        self.dp
            .call(|dp| dp.load.stats(dp.now()))
            .await
            .map_err(|e| ApiError::from_chain(ErrorKind::Internal, &e))
    }

    pub fn config_dump(&self, _req: crate::api::ConfigDumpReq) -> Result<ConfigDump, ApiError> {
        Err(ApiError::new(ErrorKind::Internal, "not yet"))
    }

    pub async fn apply(&mut self, _req: ApplyReq) -> Result<ApplyResult, ApiError> {
        Err(ApiError::new(ErrorKind::Internal, "not yet"))
    }
}
