//! The reader program's flow (`onecard_terminal::flow`) linked to the node's engine in this
//! process, for the tests and the demo: [`EngineLink`] (the engine, every change journaled)
//! and [`LocalCenter`] (the authentication center alone). The reader program proper reaches
//! the node only over HTTP (`onecard_terminal::http_link`) and does not carry the engine; these
//! links live here so that it need not.

use onecard_engine::cards::{AuthOutcome, ChallengeIssued, EncryptedPin, SwipeRefusal};
use onecard_terminal::flow::{LinkError, NodeLink};
use rand::{CryptoRng, RngCore};

/// The node's authentication center in this process, as a [`NodeLink`]: for tests with no
/// node to talk to (the reader program's real link is the node's HTTP API). The fields
/// are what the node would know: where the reader connects from, the account's available
/// credit, the time; `reachable: false` makes every call fail as an unreachable node would.
pub struct LocalCenter<'a, R> {
    pub center: &'a onecard_engine::cards::AuthCenter,
    /// The changes the center made (what the node would journal).
    pub changes: Vec<onecard_engine::cards::AuthChange>,
    pub peer: std::net::IpAddr,
    pub available_credit_cents: u64,
    pub now: u64,
    pub rng: R,
    pub reachable: bool,
}

impl<R: RngCore + CryptoRng> LocalCenter<'_, R> {
    fn reach(&self) -> Result<(), LinkError> {
        if self.reachable {
            Ok(())
        } else {
            Err(LinkError("connection refused".into()))
        }
    }
}

impl<R: RngCore + CryptoRng> NodeLink for LocalCenter<'_, R> {
    fn swipe(
        &mut self,
        reader_id: &str,
        card_number: &str,
        order_id: &str,
        amount_cents: u64,
    ) -> Result<Result<ChallengeIssued, SwipeRefusal>, LinkError> {
        self.reach()?;
        Ok(self.center.swipe(
            reader_id,
            card_number,
            self.peer,
            order_id,
            amount_cents,
            self.now,
            &mut self.rng,
        ))
    }

    fn authenticate(
        &mut self,
        challenge_id: &str,
        counter: u32,
        cryptogram: &[u8],
        pin: &EncryptedPin,
        delivery_address: &str,
    ) -> Result<AuthOutcome, LinkError> {
        self.reach()?;
        Ok(self.center.authenticate(
            challenge_id,
            counter,
            cryptogram,
            pin,
            delivery_address,
            None,
            self.available_credit_cents,
            self.now,
            // No journal here: the order's claim, which an authorisation keeps, refuses a
            // second payer in this process.
            |_| false,
            &mut self.changes,
        ))
    }

    fn confirm_address_change(
        &mut self,
        challenge_id: &str,
        accept: bool,
    ) -> Result<AuthOutcome, LinkError> {
        self.reach()?;
        Ok(self.center.confirm_address_change(
            challenge_id,
            accept,
            self.available_credit_cents,
            self.now,
            &mut self.changes,
        ))
    }
}

/// The node itself, in this process, as a [`NodeLink`]: the engine's authentication center,
/// with every change journaled, and the account's available credit read from the engine. For
/// the demo and the tests that need no HTTP between the reader program and the node.
///
/// The engine's calls are async; this link waits for each one on the calling thread, which
/// must be inside the engine's runtime (an actix `System`), as the demo's and the tests' are.
pub struct EngineLink<'a> {
    pub engine: &'a onecard_engine::Engine,
    /// The address the reader program connects from.
    pub peer: std::net::IpAddr,
    pub now: u64,
    /// The merchant being paid and what the consumer's gateway rules (SPEC F9) see of it, as
    /// the node finds them from the checkout; `None`: no rules are checked (a sign-in).
    pub at_reader: Option<(String, onecard_engine::commands::ReaderPayment)>,
}

impl NodeLink for EngineLink<'_> {
    fn swipe(
        &mut self,
        reader_id: &str,
        card_number: &str,
        order_id: &str,
        amount_cents: u64,
    ) -> Result<Result<ChallengeIssued, SwipeRefusal>, LinkError> {
        let amount = i64::try_from(amount_cents)
            .map(onecard_engine::Amount::from_cents)
            .map_err(|e| LinkError(e.to_string()))?;
        futures::executor::block_on(self.engine.swipe(
            reader_id,
            card_number,
            self.peer,
            order_id,
            amount,
            self.now,
        ))
        .map_err(|e| LinkError(e.to_string()))
    }

    fn authenticate(
        &mut self,
        challenge_id: &str,
        counter: u32,
        cryptogram: &[u8],
        pin: &EncryptedPin,
        delivery_address: &str,
    ) -> Result<AuthOutcome, LinkError> {
        futures::executor::block_on(self.engine.authenticate(
            challenge_id,
            counter,
            cryptogram,
            pin,
            delivery_address,
            None,
            self.at_reader.as_ref().map(|(m, p)| (m.as_str(), p)),
            self.now,
        ))
        .map_err(|e| LinkError(e.to_string()))
    }

    fn confirm_address_change(
        &mut self,
        challenge_id: &str,
        accept: bool,
    ) -> Result<AuthOutcome, LinkError> {
        futures::executor::block_on(self.engine.confirm_address_change(
            challenge_id,
            accept,
            self.at_reader.as_ref().map(|(m, p)| (m.as_str(), p)),
            self.now,
        ))
        .map_err(|e| LinkError(e.to_string()))
    }
}
