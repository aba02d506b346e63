//! The secret of one group (a job's generation), and the proof a ring stream gives of it.
//!
//! Worker-to-worker links carry no cluster token by default, so anyone who can reach a
//! worker's collective port could otherwise speak for its left neighbour. The coordinator
//! gives every member of a generation the same random key in its assignment; each ring
//! stream opens with a fresh nonce and an HMAC over it (and over the job, generation, step
//! and sender), so the key itself never crosses a worker-to-worker link, a stream of another
//! group cannot pass for this one, and a recorded stream cannot be replayed at another step.
//!
//! The same construction admits workers: a registering worker names a random probe key, and
//! the coordinator asks the address the worker registered to answer a challenge with it
//! ([`probe_proof`]), so that only a process serving there is ever scheduled.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes in a group key.
pub const KEY_BYTES: usize = 32;
/// Bytes in a stream's nonce.
pub const NONCE_BYTES: usize = 16;

/// Binds a proof to the ring protocol, so that an HMAC made for another purpose with the
/// same key can never pass for one.
const RING_LABEL: &[u8] = b"graft-ring-v1";
/// The same for the coordinator's derivation of a group's key from its boot seed.
const DERIVE_LABEL: &[u8] = b"graft-group-key-v1";
/// The same for the admission probe.
const PROBE_LABEL: &[u8] = b"graft-probe-v1";
/// What a raw-TCP ring link proves at connect time (the receiver's challenge, not the
/// sender's nonce: a recorded handshake answers no later one).
const LINK_LABEL: &[u8] = b"graft-ring-link-v1";

/// A worker's answer to the coordinator's admission `challenge` under its `probe_key`.
#[must_use]
pub fn probe_proof(probe_key: &[u8], challenge: &[u8]) -> Vec<u8> {
    probe_mac(probe_key, challenge)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// Whether `proof` answers `challenge` under `probe_key` (in constant time).
#[must_use]
pub fn probe_holds(probe_key: &[u8], challenge: &[u8], proof: &[u8]) -> bool {
    probe_key.len() == KEY_BYTES && probe_mac(probe_key, challenge).verify_slice(proof).is_ok()
}

fn probe_mac(probe_key: &[u8], challenge: &[u8]) -> Hmac<Sha256> {
    let mut mac = mac_of(probe_key);
    mac.update(PROBE_LABEL);
    field(&mut mac, challenge);
    mac
}

/// A group's key. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupKey([u8; KEY_BYTES]);

impl std::fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupKey(…)")
    }
}

/// What a ring stream says of itself, and proves.
#[derive(Debug, Clone, Copy)]
pub struct StreamClaim<'a> {
    /// The job.
    pub job: &'a str,
    /// The group's generation.
    pub generation: u64,
    /// The step the stream is for.
    pub step: u64,
    /// The sender's rank.
    pub from_rank: u32,
}

impl GroupKey {
    /// The key of `job` at `generation` under the coordinator's `seed` (drawn once per
    /// coordinator process): distinct per group, and unguessable without the seed.
    #[must_use]
    pub fn derive(seed: &[u8; KEY_BYTES], job: &str, generation: u64) -> Self {
        let mut mac = mac_of(seed);
        mac.update(DERIVE_LABEL);
        field(&mut mac, job.as_bytes());
        mac.update(&generation.to_le_bytes());
        Self(mac.finalize().into_bytes().into())
    }

    /// A key off the wire.
    ///
    /// # Errors
    /// A message naming the length when it is not [`KEY_BYTES`] long.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        <[u8; KEY_BYTES]>::try_from(bytes).map(Self).map_err(|_| {
            format!(
                "a group key is {KEY_BYTES} bytes, the assignment carries {}",
                bytes.len()
            )
        })
    }

    /// The key's bytes, for the assignment.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The proof of `claim` with `nonce`.
    #[must_use]
    pub fn prove(&self, claim: StreamClaim<'_>, nonce: &[u8]) -> Vec<u8> {
        self.ring_mac(claim, nonce).finalize().into_bytes().to_vec()
    }

    /// Whether `proof` is this key's proof of `claim` with `nonce` (in constant time).
    #[must_use]
    pub fn verify(&self, claim: StreamClaim<'_>, nonce: &[u8], proof: &[u8]) -> bool {
        nonce.len() == NONCE_BYTES && self.ring_mac(claim, nonce).verify_slice(proof).is_ok()
    }

    /// The proof that opens a raw-TCP ring link of `job` at `generation` from `from_rank`,
    /// answering the receiver's `challenge`.
    #[must_use]
    pub fn prove_link(
        &self,
        job: &str,
        generation: u64,
        from_rank: u32,
        challenge: &[u8],
    ) -> Vec<u8> {
        self.link_mac(job, generation, from_rank, challenge)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Whether `proof` is this key's answer to `challenge` for that link (in constant time).
    #[must_use]
    pub fn verify_link(
        &self,
        job: &str,
        generation: u64,
        from_rank: u32,
        challenge: &[u8],
        proof: &[u8],
    ) -> bool {
        challenge.len() == NONCE_BYTES
            && self
                .link_mac(job, generation, from_rank, challenge)
                .verify_slice(proof)
                .is_ok()
    }

    fn link_mac(
        &self,
        job: &str,
        generation: u64,
        from_rank: u32,
        challenge: &[u8],
    ) -> Hmac<Sha256> {
        let mut mac = mac_of(&self.0);
        mac.update(LINK_LABEL);
        field(&mut mac, job.as_bytes());
        mac.update(&generation.to_le_bytes());
        mac.update(&from_rank.to_le_bytes());
        field(&mut mac, challenge);
        mac
    }

    fn ring_mac(&self, claim: StreamClaim<'_>, nonce: &[u8]) -> Hmac<Sha256> {
        let mut mac = mac_of(&self.0);
        mac.update(RING_LABEL);
        field(&mut mac, claim.job.as_bytes());
        mac.update(&claim.generation.to_le_bytes());
        mac.update(&claim.step.to_le_bytes());
        mac.update(&claim.from_rank.to_le_bytes());
        field(&mut mac, nonce);
        mac
    }
}

/// A fresh nonce (or seed) from the operating system.
///
/// # Errors
/// A message when the operating system has no randomness to give.
pub fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| format!("no randomness: {e}"))?;
    Ok(buf)
}

fn mac_of(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length; this cannot fail.
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

/// A length-prefixed field, so that ("ab", "c") and ("a", "bc") never hash alike.
fn field(mac: &mut Hmac<Sha256>, bytes: &[u8]) {
    mac.update(&(bytes.len() as u64).to_le_bytes());
    mac.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(step: u64) -> StreamClaim<'static> {
        StreamClaim {
            job: "job-1",
            generation: 2,
            step,
            from_rank: 1,
        }
    }

    #[test]
    fn a_proof_holds_only_for_its_key_claim_and_nonce() {
        let seed = [7u8; KEY_BYTES];
        let key = GroupKey::derive(&seed, "job-1", 2);
        let nonce = [3u8; NONCE_BYTES];
        let proof = key.prove(claim(5), &nonce);
        assert!(key.verify(claim(5), &nonce, &proof));
        // Another step, sender, generation, job or nonce: refused.
        assert!(!key.verify(claim(6), &nonce, &proof));
        let mut other = claim(5);
        other.from_rank = 0;
        assert!(!key.verify(other, &nonce, &proof));
        other = claim(5);
        other.generation = 3;
        assert!(!key.verify(other, &nonce, &proof));
        other = claim(5);
        other.job = "job-2";
        assert!(!key.verify(other, &nonce, &proof));
        assert!(!key.verify(claim(5), &[4u8; NONCE_BYTES], &proof));
        // Another group's key, a short nonce, a cut proof: refused.
        let next = GroupKey::derive(&seed, "job-1", 3);
        assert_ne!(next, key);
        assert!(!next.verify(claim(5), &nonce, &proof));
        assert!(!key.verify(claim(5), &nonce[..8], &key.prove(claim(5), &nonce[..8])));
        assert!(!key.verify(claim(5), &nonce, &proof[..16]));
        assert!(!key.verify(claim(5), &nonce, &[]));
    }

    #[test]
    fn a_probe_answer_holds_only_for_its_key_and_challenge() {
        let key = [4u8; KEY_BYTES];
        let proof = probe_proof(&key, b"challenge");
        assert!(probe_holds(&key, b"challenge", &proof));
        assert!(!probe_holds(&key, b"challengf", &proof));
        assert!(!probe_holds(&[5u8; KEY_BYTES], b"challenge", &proof));
        // A short key is never one a worker drew.
        assert!(!probe_holds(
            &key[..4],
            b"challenge",
            &probe_proof(&key[..4], b"challenge")
        ));
    }

    #[test]
    fn keys_differ_by_seed_and_off_the_wire_only_the_right_length_is_taken() {
        let a = GroupKey::derive(&[1u8; KEY_BYTES], "job-1", 1);
        let b = GroupKey::derive(&[2u8; KEY_BYTES], "job-1", 1);
        assert_ne!(a, b);
        assert_eq!(GroupKey::from_bytes(a.as_bytes()), Ok(a.clone()));
        let e = GroupKey::from_bytes(&[0u8; 31]).expect_err("short");
        assert!(e.contains("31"), "{e}");
        assert_eq!(format!("{a:?}"), "GroupKey(…)");
        assert_ne!(random::<NONCE_BYTES>(), random::<NONCE_BYTES>());
    }

    #[test]
    fn a_link_proof_holds_only_for_its_key_link_and_challenge() {
        let key = GroupKey::derive(&[3u8; KEY_BYTES], "job-1", 2);
        let challenge = [9u8; NONCE_BYTES];
        let proof = key.prove_link("job-1", 2, 1, &challenge);
        assert!(key.verify_link("job-1", 2, 1, &challenge, &proof));
        assert!(!key.verify_link("job-1", 2, 0, &challenge, &proof));
        assert!(!key.verify_link("job-1", 3, 1, &challenge, &proof));
        assert!(!key.verify_link("job-2", 2, 1, &challenge, &proof));
        assert!(!key.verify_link("job-1", 2, 1, &[8u8; NONCE_BYTES], &proof));
        let other = GroupKey::derive(&[4u8; KEY_BYTES], "job-1", 2);
        assert!(!other.verify_link("job-1", 2, 1, &challenge, &proof));
        // Not interchangeable with a stream's proof of the same numbers.
        let stream = key.prove(
            StreamClaim {
                job: "job-1",
                generation: 2,
                step: 0,
                from_rank: 1,
            },
            &challenge,
        );
        assert!(!key.verify_link("job-1", 2, 1, &challenge, &stream));
    }
}
