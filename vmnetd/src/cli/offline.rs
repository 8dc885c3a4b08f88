//! `mktap`/`rmtap` without a daemon: the same checks and actions, nothing recorded.

use super::Failure;
use crate::api::{ApiError, ErrorKind, RmTap, Source, TapInfo, TapSpec};
use crate::netlink::Netlink;
use crate::tap::{self, Policy, TapDecl};

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure { kind: ErrorKind::Internal, message: format!("cannot start runtime: {e}") })
}

fn fail(e: tap::Error) -> Failure {
    ApiError::from_chain(e.kind(), &e).into()
}

fn nl_fail(e: crate::netlink::Error) -> Failure {
    ApiError::from_chain(ErrorKind::Internal, &e).into()
}

pub fn mktap(spec: TapSpec) -> Result<TapInfo, Failure> {
    runtime()?.block_on(async {
        let nl = Netlink::connect().map_err(nl_fail)?;
        let name = match &spec.name {
            Some(n) => n.clone(),
            None => tap::pick_free_name(&nl, &Default::default()).await.map_err(fail)?,
        };
        let mut decl = TapDecl::from_spec(&spec, name.clone()).map_err(fail)?;
        let outcome = tap::ensure(&nl, &decl, Policy::Declare).await.map_err(fail)?;
        let link = nl.link(&name).await.map_err(nl_fail)?;
        decl.created = match outcome {
            tap::Outcome::Created => true,
            tap::Outcome::Adopted => link.as_ref().is_some_and(|l| tap::is_ours(None, l)),
        };
        Ok(decl.info(link.as_ref(), Source::None))
    })
}

pub fn rmtap(rm: RmTap) -> Result<TapInfo, Failure> {
    runtime()?.block_on(async {
        let nl = Netlink::connect().map_err(nl_fail)?;
        let link = nl.link(&rm.name).await.map_err(nl_fail)?;
        let link = crate::daemon::core::existing_tap(&rm.name, link).map_err(fail)?;
        let info = crate::daemon::core::undeclared_info(&rm.name, &link);
        tap::remove(&nl, &rm.name, None, rm.force).await.map_err(fail)?;
        Ok(info)
    })
}
