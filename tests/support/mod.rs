//! Shared harness of the integration tests (`tests/*.rs`, each with `mod support;`), one file per
//! concern:
//!
//! * [`audit`]: the requests the API server received for a test's namespace, from its audit log:
//!   how "no write" is counted.
//! * [`control_plane`]: the one real control plane all tests of a test binary share (started or
//!   attached, see there) or a private one its tests restart parts of, and the CRD installed on it
//!   ([`install_crd`]).
//! * [`namespace`]: a fresh [`TestNamespace`] per test, deleted on drop and dumped on failure.
//! * [`instance`]: a snowsim instance and the credentials a platform team would hold for it.
//! * [`operator`]: the operator binary as a child process, its logs and metrics.
//! * [`scene`]: a namespace, an instance and a connection `acme` in it, with and without an
//!   operator running, and the checks on them (no secret leaked).
//! * [`conditions`]: reading and asserting the connection's conditions.
//! * [`browser`]: headless Chromium, and the instance's consent pages answered in it.
//! * [`consent`]: a connection awaiting consent, and a person consenting in the browser.
//! * [`proxy`]: an HTTP `CONNECT` proxy.
//! * [`forward`]: a TCP forwarder whose target the test switches.
//! * [`poll`]: [`poll_until`], the only way to wait: a deadline, a description, and the last
//!   thing observed.
#![allow(dead_code)] // every test binary compiles this module and uses only part of it

pub mod audit;
pub mod browser;
pub mod conditions;
pub mod consent;
pub mod control_plane;
pub mod forward;
pub mod instance;
pub mod namespace;
pub mod operator;
pub mod poll;
pub mod proxy;
pub mod scene;

#[allow(unused_imports)] // the names most tests use, at the root; each binary uses only some
pub use control_plane::{ControlPlane, control_plane, install_crd, repo_path};
pub use namespace::TestNamespace;
pub use poll::{Observed, poll_until};
