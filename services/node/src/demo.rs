//! `serve --demo`: a demo domain with two users, so that a softphone can
//! register within a minute.

use dialtone_actors::{DomainRef, Error, Meta, NewDomain, NewUserRequest, Provisioning, UserRef};
use dialtone_domain::domain::Settings;
use dialtone_domain::{DomainName, UserName};

pub const DEMO_DOMAIN: &str = "demo.dialtone.test";
const DEMO_USERS: &[&str] = &["alice", "bob"];

/// Creates the demo domain and users if missing, sets fresh passwords and
/// prints the credentials.
pub async fn provision(provisioning: &Provisioning) -> anyhow::Result<()> {
    let name = DomainName::parse(DEMO_DOMAIN)?;
    let new = NewDomain {
        name: name.clone(),
        settings: Settings {
            description: "demo domain created by `dialtone serve --demo`".into(),
            ..Settings::default()
        },
    };
    match provisioning.create_domain(new, Meta::default()).await {
        Ok(_) | Err(Error::Domain(dialtone_domain::Error::AlreadyExists(_))) => {}
        Err(e) => return Err(e.into()),
    }
    println!("demo domain: {DEMO_DOMAIN} (SIP realm and registrar domain)");
    for user in DEMO_USERS {
        let password = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let address = format!("{user}@{DEMO_DOMAIN}");
        let user_ref = UserRef::parse(&address)?;
        match provisioning.get_user(&user_ref).await {
            Ok(_) => {
                provisioning
                    .set_password(&user_ref, password.clone(), Meta::default())
                    .await?;
            }
            Err(Error::Domain(dialtone_domain::Error::NotFound(_))) => {
                let new = NewUserRequest {
                    domain: DomainRef::Name(name.clone()),
                    username: UserName::parse(user)?,
                    password: password.clone(),
                    display_name: user[..1].to_uppercase() + &user[1..],
                    caller_id: String::new(),
                    max_contacts: None,
                    enabled: true,
                };
                provisioning.create_user(new, Meta::default()).await?;
            }
            Err(e) => return Err(e.into()),
        }
        println!("demo user: {address} password: {password}");
    }
    Ok(())
}
