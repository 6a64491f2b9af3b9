//! `mysql://user[:password]@host[:port]/database[?ssl-mode=…]` (also `mariadb://`), as MySQL
//! Connector/J and the MariaDB connectors write it; user and password may be
//! percent-encoded. `ssl-mode` (or `sslMode`) is `disabled` (the default), `required`,
//! `verify_ca` or `verify_identity`: with any but the first the connection is TLS and the
//! server's certificate is verified, chain and name (the host does TLS and always verifies;
//! the MySQL client's `required` would not).

use patchbay_sdk::net::{parse_url, percent_decode as decode};

/// Where and as whom to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `HOST:PORT` (port 3306 when none is given).
    pub addr: String,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// `ssl-mode` other than `disabled`.
    pub tls: bool,
}

impl Url {
    /// Parse a URL; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Url, String> {
        let rest = text
            .strip_prefix("mysql://")
            .or_else(|| text.strip_prefix("mariadb://"))
            .ok_or("it does not start with mysql:// or mariadb://")?;
        let (rest, tls) = match rest.split_once('?') {
            None => (rest, false),
            Some((rest, query)) => (rest, ssl_mode(query)?),
        };
        let (server, database) = match rest.rsplit_once('@') {
            Some((auth, host)) => {
                let (host, database) = host
                    .split_once('/')
                    .ok_or("no database: write mysql://user@host:port/database")?;
                (format!("{auth}@{host}"), database)
            }
            None => return Err("no user: write mysql://user[:password]@host:port/database".into()),
        };
        if database.is_empty() || database.contains('/') {
            return Err(format!("`{database}` is not a database name"));
        }
        let (addr, user, password) = parse_url(&server, "mysql", 3306)?;
        let user = decode(user.as_deref().unwrap_or(""))?;
        if user.is_empty() {
            return Err("an empty user name".into());
        }
        Ok(Url {
            addr,
            user,
            password: password.as_deref().map(decode).transpose()?,
            database: decode(database)?,
            tls,
        })
    }
}

/// Whether the query (`ssl-mode=…`, the one parameter taken) asks for TLS.
fn ssl_mode(query: &str) -> Result<bool, String> {
    let Some((name, value)) = query.split_once('=') else {
        return Err(format!("`?{query}`: write ?ssl-mode=required"));
    };
    if !matches!(name, "ssl-mode" | "sslMode" | "ssl_mode") {
        return Err(format!(
            "`?{query}`: the only URL parameter taken is ssl-mode; give the others as config keys"
        ));
    }
    match value.to_ascii_lowercase().replace('-', "_").as_str() {
        "disabled" => Ok(false),
        "required" | "verify_ca" | "verify_identity" => Ok(true),
        other => Err(format!(
            "ssl-mode `{other}` is not one of disabled, required, verify_identity"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_as_the_connectors_write_them() {
        assert_eq!(
            Url::parse("mysql://app:p%40ss@db.example:3307/shop"),
            Ok(Url {
                addr: "db.example:3307".into(),
                user: "app".into(),
                password: Some("p@ss".into()),
                database: "shop".into(),
                tls: false,
            })
        );
        let plain = Url::parse("mariadb://root@127.0.0.1/test").unwrap();
        assert_eq!(plain.addr, "127.0.0.1:3306");
        assert_eq!(plain.password, None);
        assert!(
            Url::parse("mysql://root@h/db?ssl-mode=REQUIRED")
                .unwrap()
                .tls
        );
        assert!(
            Url::parse("mysql://root@h/db?sslMode=VERIFY_IDENTITY")
                .unwrap()
                .tls
        );
        assert!(
            !Url::parse("mysql://root@h/db?ssl-mode=disabled")
                .unwrap()
                .tls
        );
        assert_eq!(
            Url::parse("mysql://127.0.0.1/test"),
            Err("no user: write mysql://user[:password]@host:port/database".into())
        );
        assert_eq!(
            Url::parse("mysql://root@127.0.0.1:3306"),
            Err("no database: write mysql://user@host:port/database".into())
        );
        assert!(Url::parse("postgres://root@h/db").is_err());
        assert!(Url::parse("mysql://root@h/db?ssl-mode=maybe").is_err());
        assert!(Url::parse("mysql://root@h/db?charset=utf8").is_err());
        assert!(Url::parse("mysql://root@h:99999/db").is_err());
    }
}
