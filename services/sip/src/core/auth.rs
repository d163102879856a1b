//! Digest challenges (401 for the registrar, 407 for the proxy) and the
//! checks of an answer: nonce, nonce count, algorithm, realm, password;
//! lock-outs after failed attempts and their reporting.

use super::*;
use crate::backend::DigestAlgorithms;

/// At most this many lock-outs per second become security events; the
/// others are counted in metrics only.
pub(super) const MAX_LOCKOUT_EVENTS_PER_SEC: u32 = 20;

/// Which challenge a request gets: `401`/`WWW-Authenticate` for REGISTER,
/// `407`/`Proxy-Authenticate` for requests to proxy (RFC 3261 s.22.3).
#[derive(Clone, Copy)]
pub(super) struct Challenge {
    code: u16,
    header: &'static str,
    credentials: Name,
}

pub(super) const REGISTRAR: Challenge = Challenge {
    code: 401,
    header: "WWW-Authenticate",
    credentials: Name::Authorization,
};

pub(super) const PROXY: Challenge = Challenge {
    code: 407,
    header: "Proxy-Authenticate",
    credentials: Name::ProxyAuthorization,
};

impl Core {
    pub(super) fn challenge_with(
        &self,
        cx: Cx<'_>,
        kind: Challenge,
        realm: &str,
        algorithms: DigestAlgorithms,
        stale: bool,
    ) -> (u16, Bytes) {
        let mut nonce = [0u8; NONCE_LEN];
        let nonce = self.nonces.issue_into(realm, now_ms(), &mut nonce);
        let opaque = self.nonces.opaque();
        // One challenge per algorithm of the domain, in the domain's order
        // (RFC 8760 s.2.4 wants the preferred one first; clients that read
        // only the first challenge, or refuse the whole response when one
        // names an algorithm they do not know, are why the order and the
        // list are the domain's choice: ADR 0012).
        let algorithms = if self.cfg.challenge_md5_first {
            algorithms.md5_first()
        } else {
            algorithms
        };
        let order = algorithms.as_slice();
        let each = 96 + realm.len() + nonce.len() + opaque.len();
        self.respond_sized(
            cx,
            kind.code,
            response::reason(kind.code),
            order.len() * each,
            |r| {
                for alg in order {
                    r.header_with(kind.header, |b| {
                        write_challenge(b, realm, nonce, opaque, *alg, stale)
                    });
                }
            },
        )
    }

    pub(super) fn forbidden(&self, cx: Cx<'_>) -> (u16, Bytes) {
        // One response for wrong password, unknown user, wrong username and
        // disabled user: nothing to tell them apart.
        self.respond(cx, 403, response::reason(403), |_| {})
    }

    /// Looks up the sender's credentials and checks its digest answer
    /// (`kind`: 401 as a registrar, 407 as a proxy). `Err` is the response
    /// to send instead: a challenge, a refusal (403 for a domain that is
    /// not ours or is suspended) or a backend failure.
    pub(super) async fn authenticate_sender(
        &self,
        cx: Cx<'_>,
        kind: Challenge,
        domain: &str,
        user: &str,
        method_text: &str,
    ) -> Result<(), (u16, Bytes)> {
        let lookup = match self.call(self.backend.credentials(domain, user)).await {
            Ok(l) => l,
            Err(e) => return Err(self.backend_failure(cx, &e)),
        };
        let (creds, known, algorithms) = match lookup {
            // Not a domain of ours: we serve no one there.
            Lookup::UnknownDomain | Lookup::DomainSuspended => return Err(self.forbidden(cx)),
            Lookup::UnknownUser(algorithms) => (&self.dummy, false, algorithms),
            Lookup::Found(ref c) => (c, true, c.algorithms),
        };
        match self.authenticate(
            cx,
            kind,
            domain,
            user,
            algorithms,
            creds,
            known,
            method_text,
        ) {
            Some(refused) => Err(refused),
            None => Ok(()),
        }
    }

    /// Checks the digest credentials of `user@domain` in `cx` (RFC 7616,
    /// qop=auth, stateless nonce, nonce-count replay). `None`: the request
    /// is authenticated (and the user enabled); otherwise the response to
    /// send (a challenge, or 403 for wrong credentials, unknown users and
    /// disabled users alike).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn authenticate(
        &self,
        cx: Cx<'_>,
        kind: Challenge,
        domain: &str,
        user: &str,
        algorithms: DigestAlgorithms,
        creds: &UserCredentials,
        known: bool,
        method_text: &str,
    ) -> Option<(u16, Bytes)> {
        // `algorithms` is the domain's list, for unknown users too: their
        // challenge is a known user's.
        let ip = cx.source.addr.ip();
        if self.guard.locked(ip, domain, user, Instant::now()) {
            self.metrics.auth_failure("locked_out");
            return Some(self.forbidden(cx));
        }

        let mut given = None;
        for h in cx.msg.headers(kind.credentials) {
            match CredentialsRef::parse(h) {
                Ok(c) if c.realm.eq_ignore_ascii_case(domain) => {
                    given = Some(c);
                    break;
                }
                Ok(_) | Err(DigestError::NotDigest) => {}
                Err(_) => return Some(self.respond(cx, 400, "Bad Authorization", |_| {})),
            }
        }
        let Some(c) = given else {
            return Some(self.challenge_with(cx, kind, domain, algorithms, false));
        };
        let acceptable = c.algorithm.is_some()
            && c.qop
                .as_deref()
                .is_some_and(|q| q.eq_ignore_ascii_case("auth"))
            && c.cnonce.is_some()
            && c.nc.is_some();
        if !acceptable {
            self.metrics.auth_failure("unsupported");
            return Some(self.challenge_with(cx, kind, domain, algorithms, false));
        }
        let now = now_ms();
        let nonce = self.nonces.check(&c.nonce, domain, now);
        if nonce == NonceCheck::Invalid {
            // Not ours (or from before a secret change): a fresh challenge.
            self.metrics.auth_failure("nonce");
            return Some(self.challenge_with(cx, kind, domain, algorithms, false));
        }
        let alg = c.algorithm.unwrap_or(Algorithm::Md5);
        let ha1 = match alg {
            Algorithm::Md5 => creds.ha1_md5.as_deref().unwrap_or(&self.dummy_md5),
            Algorithm::Sha256 => creds.ha1_sha256.as_str(),
        };
        // Always compute the digest, whoever the user is (timing).
        let digest_ok = c.verify(ha1, method_text);
        // Only the domain's algorithms are accepted: an answer with another
        // one (say MD5 to a SHA-256-only domain) is a downgrade, refused
        // like a wrong password, whatever its digest.
        let refused_algorithm =
            !algorithms.contains(alg) || (alg == Algorithm::Md5 && creds.ha1_md5.is_none());
        let ok = digest_ok && known && !refused_algorithm && c.username == user;
        if !ok {
            self.metrics.auth_failure("credentials");
            if let Some(lockout) = self.guard.failure(ip, domain, user, Instant::now()) {
                self.report_lockout(lockout);
            }
            return Some(self.forbidden(cx));
        }
        let id = match nonce {
            NonceCheck::Fresh(id) => id,
            _ => return Some(self.challenge_with(cx, kind, domain, algorithms, true)),
        };
        let nc = c.nc.as_ref().map_or(0, |n| n.1);
        match self.nonces.use_nc(id, nc, now) {
            NcCheck::Ok => {}
            NcCheck::Replay | NcCheck::Forgotten => {
                self.metrics.auth_failure("replay");
                return Some(self.challenge_with(cx, kind, domain, algorithms, true));
            }
        }
        if creds.disabled {
            return Some(self.forbidden(cx));
        }

        None
    }

    pub(super) fn report_lockout(&self, lockout: Lockout) {
        let scope = match lockout.scope {
            LockScope::Source => "source",
            LockScope::User { .. } => "user",
        };
        metrics::counter!(metric::LOCKOUTS, "scope" => scope).increment(1);
        tracing::warn!(source = %lockout.source, realm = %lockout.realm, scope, failures = lockout.failures, "locked out after failed authentications");
        let second = now_ms() / 1000;
        let report = match self.lockouts_reported.lock() {
            Ok(mut r) => {
                if r.0 != second {
                    *r = (second, 0);
                }
                r.1 += 1;
                r.1 <= MAX_LOCKOUT_EVENTS_PER_SEC
            }
            Err(_) => false,
        };
        if report {
            self.backend.lockout(lockout);
        } else {
            metrics::counter!(metric::DROPPED, "reason" => "lockout_event_rate").increment(1);
        }
    }
}
