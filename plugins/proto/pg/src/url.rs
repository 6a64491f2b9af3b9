//! `postgres://user[:password]@host[:port]/database[?sslmode=…]` (also `postgresql://`), as
//! libpq writes it; user and password may be percent-encoded. `sslmode` is `disable` (the
//! default), `require` or `verify-full`: with either of the last two the connection is TLS and
//! the server's certificate is verified, chain and name (the host does TLS and always
//! verifies; libpq's `require` would not).

use patchbay_sdk::net::percent_decode as decode;

/// Where and as whom to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `HOST:PORT` (port 5432 when none is given).
    pub addr: String,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// `sslmode=require` or `verify-full`.
    pub tls: bool,
}

impl Url {
    /// Parse a URL; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Url, String> {
        let rest = text
            .strip_prefix("postgres://")
            .or_else(|| text.strip_prefix("postgresql://"))
            .ok_or("it does not start with postgres://")?;
        let (rest, tls) = match rest.split_once('?') {
            None => (rest, false),
            Some((rest, query)) => (rest, sslmode(query)?),
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let (host, database) = rest
            .split_once('/')
            .ok_or("no database: write postgres://user@host:port/database")?;
        if database.is_empty() || database.contains('/') {
            return Err(format!("`{database}` is not a database name"));
        }
        if host.is_empty() || host.starts_with(':') {
            return Err("no host".into());
        }
        let addr = match host.rsplit_once(':') {
            Some(_) if host.starts_with('[') && host.ends_with(']') => format!("{host}:5432"),
            Some((_, port)) => {
                port.parse::<u16>()
                    .map_err(|_| format!("`{port}` is not a port number"))?;
                host.to_owned()
            }
            None => format!("{host}:5432"),
        };
        let (user, password) = match auth {
            None => ("postgres".to_owned(), None),
            Some(auth) => match auth.split_once(':') {
                Some((u, p)) => (decode(u)?, Some(decode(p)?)),
                None => (decode(auth)?, None),
            },
        };
        if user.is_empty() {
            return Err("an empty user name".into());
        }
        Ok(Url {
            addr,
            user,
            password,
            database: decode(database)?,
            tls,
        })
    }
}

/// Whether the query (`sslmode=…`, the one parameter taken) asks for TLS.
fn sslmode(query: &str) -> Result<bool, String> {
    match query.split_once('=') {
        Some(("sslmode", "disable")) => Ok(false),
        Some(("sslmode", "require" | "verify-full" | "verify-ca")) => Ok(true),
        Some(("sslmode", other)) => Err(format!(
            "sslmode `{other}` is not one of disable, require, verify-full"
        )),
        _ => Err(format!(
            "`?{query}`: the only URL parameter taken is sslmode; give the others as config keys"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_as_libpq_writes_them() {
        assert_eq!(
            Url::parse("postgres://app:p%40ss@db.example:6543/orders"),
            Ok(Url {
                addr: "db.example:6543".into(),
                user: "app".into(),
                password: Some("p@ss".into()),
                database: "orders".into(),
                tls: false,
            })
        );
        let plain = Url::parse("postgresql://127.0.0.1/test").unwrap();
        assert_eq!(plain.addr, "127.0.0.1:5432");
        assert_eq!(plain.user, "postgres");
        assert_eq!(plain.password, None);
        assert_eq!(
            Url::parse("postgres://127.0.0.1:5432"),
            Err("no database: write postgres://user@host:port/database".into())
        );
        assert!(Url::parse("mysql://x/y").is_err());
        assert!(Url::parse("postgres://h/db?sslmode=require").unwrap().tls);
        assert!(Url::parse("postgres://h/db?sslmode=maybe").is_err());
        assert!(Url::parse("postgres://h/db?connect_timeout=3").is_err());
        assert!(Url::parse("postgres://h:99999/db").is_err());
    }
}
