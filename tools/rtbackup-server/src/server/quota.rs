//! A client's limits from its enrolment (`enroll --max-volumes`,
//! `--max-bytes`): a volume more, or bytes more, are refused with
//! `over-quota`, and nothing is deleted.

use super::*;

/// The limits of `client` from its enrolment (`None` without TLS: no
/// clients, no limits).
pub(super) fn limits_of(
    shared: &Shared,
    client: &str,
) -> Result<Option<rtbackup_tls::ClientLimits>, SessionError> {
    let Some(tls) = &shared.tls else {
        return Ok(None);
    };
    tls.pki
        .limits(client)
        .map(Some)
        .map_err(|e| session_error(error_code::INTERNAL, e.to_string()))
}

/// Refuses a volume more to a client at its `max_volumes`.
pub(super) fn quota_for_new_volume(shared: &Shared, client: &str) -> Result<(), SessionError> {
    let Some(limits) = limits_of(shared, client)? else {
        return Ok(());
    };
    let owned = shared.store.volumes_of(client)?.len();
    if owned >= limits.max_volumes as usize {
        warn!(
            client,
            owned,
            max = limits.max_volumes,
            "a volume over the client's limit refused"
        );
        return Err(session_error(
            error_code::OVER_QUOTA,
            format!(
                "client {client} owns {owned} volumes, its limit (enroll --max-volumes); \
                 the operator can raise it"
            ),
        ));
    }
    Ok(())
}

/// The bytes of records a client may still send, shared by all its live
/// sessions, so that streams of several volumes at once cannot together
/// pass its `max_bytes`. Made from the store when a client with none live
/// connects; dropped with its last session.
pub(super) struct Budget {
    client: String,
    max: u64,
    left: Mutex<u64>,
}

impl Budget {
    /// Takes `n` bytes from the budget, or refuses them all (`over-quota`)
    /// if fewer are left.
    pub(super) fn take(&self, n: u64) -> Result<(), SessionError> {
        let mut left = lock(&self.left);
        if n > *left {
            return Err(over_bytes(&self.client, self.max - *left, self.max));
        }
        *left -= n;
        Ok(())
    }
}

/// The byte budget of `client` (`None`: no client, or no `max_bytes`):
/// the one its live sessions share, or a new one of its `max_bytes` less
/// the journal its volumes hold.
pub(super) fn byte_budget(
    shared: &Shared,
    client: Option<&str>,
) -> Result<Option<Arc<Budget>>, SessionError> {
    let Some(client) = client else {
        return Ok(None);
    };
    let Some(max) = limits_of(shared, client)?.and_then(|l| l.max_bytes) else {
        return Ok(None);
    };
    // Held while the store is read: a second session of the client waits
    // for this one's budget instead of making its own.
    let mut budgets = lock(&shared.budgets);
    if let Some(b) = budgets.get(client).and_then(std::sync::Weak::upgrade) {
        return Ok(Some(b));
    }
    // An open volume's counters come from memory.
    let held = shared.store.journal_bytes_of(client, |v| {
        let open = lock(&shared.volumes).get(v).map(|m| Arc::clone(&m.volume));
        open.map(|vol| vol.status().map(|s| s.journal_bytes))
    })?;
    if held >= max {
        return Err(over_bytes(client, held, max));
    }
    let b = Arc::new(Budget {
        client: client.to_owned(),
        max,
        left: Mutex::new(max - held),
    });
    budgets.retain(|_, w| w.strong_count() > 0);
    budgets.insert(client.to_owned(), Arc::downgrade(&b));
    Ok(Some(b))
}

pub(super) fn over_bytes(client: &str, held: u64, max: u64) -> SessionError {
    warn!(
        client,
        held, max, "the client's history is at its limit: nothing more acknowledged"
    );
    session_error(
        error_code::OVER_QUOTA,
        format!(
            "client {client} holds {held} bytes of history, its limit is {max} \
             (enroll --max-bytes): nothing more is acknowledged until retention \
             frees room or the operator raises it; the ring keeps the records"
        ),
    )
}
