//! A snowsim instance per test (`acme.service-now.com`) and the credentials a platform team
//! would hold for it after consent.

/// The host every test instance answers as.
pub const HOST: &str = "acme.service-now.com";
/// The instance's OAuth application (Application Registry entry) in snowsim's seed.
pub const APP: &str = "Neo Agent";
/// The service account's password in snowsim's seed (`neo.agent` / `neo.agent`).
pub const AGENT: &str = "neo.agent";

/// snowsim's instance `acme.service-now.com` with `neo.agent` set up as the README's
/// least-privilege option says (`itil`, `business_rule_admin`, the script-writer role and
/// `x_neoagent_integration` with its property ACLs).
pub fn least_privilege() -> snowsim::Config {
    serving(snowsim::InstanceConfig::new(HOST).least_privilege(AGENT))
}

/// The same instance with `neo.agent` as an administrator (`admin` and the script-writer role).
pub fn admin_account() -> snowsim::Config {
    serving(snowsim::InstanceConfig::new(HOST).admin_account(AGENT))
}

/// The same instance with `neo.agent` as a new account has it: `itil` only.
pub fn fresh_account() -> snowsim::Config {
    serving(snowsim::InstanceConfig::new(HOST))
}

fn serving(instance: snowsim::InstanceConfig) -> snowsim::Config {
    snowsim::Config {
        instances: vec![instance],
        ..snowsim::Config::default()
    }
}

/// A snowsim server serving `config`.
pub async fn simulator_of(config: snowsim::Config) -> snowsim::Server {
    snowsim::Server::start(config, "127.0.0.1:0".parse().expect("address"))
        .await
        .expect("start snowsim")
}

/// A snowsim server with the instance `acme.service-now.com` set up with least privilege.
pub async fn simulator() -> snowsim::Server {
    simulator_of(least_privilege()).await
}

/// The credentials and a refresh token for `neo.agent`, as a platform team would have them
/// after consent (the token obtained with the documented password grant).
pub struct Seed {
    /// Client id of the OAuth app.
    pub client_id: String,
    /// Client secret of the OAuth app.
    pub client_secret: String,
    /// A refresh token issued to `neo.agent`.
    pub refresh_token: String,
}
/// Gets a refresh token for `user` from the simulator's token endpoint (password grant).
pub async fn seed(simulator: &snowsim::Server, user: &str) -> Seed {
    let app = simulator.admin().oauth_app(APP).expect("the seeded OAuth app");
    let answer = snowsim::drive::password_grant(simulator, HOST, &app, user).await;
    let refresh_token = answer["refresh_token"].as_str().expect("a refresh token").to_owned();
    // What the operator does is counted from here.
    simulator.admin().clear_request_log();
    Seed {
        client_id: app.client_id,
        client_secret: app.client_secret,
        refresh_token,
    }
}
