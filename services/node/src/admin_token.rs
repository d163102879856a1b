//! The admin token of the API: the configured one, or one made once and
//! kept in `<data-dir>/admin.token`, and how to use it with the CLI.

use anyhow::Context as _;

use crate::config::Config;

/// The admin token of the API and where it came from.
pub struct AdminToken {
    pub token: String,
    /// `None`: from the configuration; else the file it is kept in.
    pub file: Option<std::path::PathBuf>,
}

impl AdminToken {
    /// How to use the admin token with the CLI (the token itself only when it
    /// is in a file the operator can read anyway).
    pub fn print_cli_use(&self, scheme: &str, grpc: std::net::SocketAddr) {
        match &self.file {
            Some(path) => println!(
                "API: export DIALTONE_TOKEN=$(cat {}); dialtone --server {scheme}://{grpc} domain list",
                path.display()
            ),
            None => println!(
                "API: export DIALTONE_TOKEN=<the configured admin token>; dialtone --server {scheme}://{grpc} domain list"
            ),
        }
    }
}

/// The admin token: the configured one, else `<data-dir>/admin.token`,
/// made (256 random bits, file mode 0600) and printed once on stdout on
/// first start. Later starts read it and print nothing.
pub fn load_or_create(config: &Config) -> anyhow::Result<AdminToken> {
    use std::io::Write as _;
    if let Some(token) = &config.admin_token {
        return Ok(AdminToken {
            token: token.0.clone(),
            file: None,
        });
    }
    let path = config.data_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(token) => {
            let token = token.trim().to_owned();
            anyhow::ensure!(
                token.len() >= crate::config::MIN_ADMIN_TOKEN_LEN,
                "{} is too short: delete it to make a new one",
                path.display()
            );
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        mode = format!("{mode:o}"),
                        "the admin token file is readable by others; chmod 600 it"
                    );
                }
            }
            return Ok(AdminToken {
                token,
                file: Some(path),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let token = format!("dta_{}", dialtone_api::auth::random_secret());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()?;
    // Shown this once; later starts read the file and print nothing.
    println!(
        "admin token (saved in {}, shown only now): {token}",
        path.display()
    );
    Ok(AdminToken {
        token,
        file: Some(path),
    })
}
