//! The demo's claims: each thing it shows is checked against real answers and counters, printed
//! as it is checked, and summed up at the end. A demo whose claims do not all hold fails, naming
//! them, so that it can never print success while the attacker still gets through.

use anyhow::{Result, bail};

/// The claims checked so far.
#[derive(Default)]
pub struct Claims {
    checked: Vec<Claim>,
}

struct Claim {
    what: &'static str,
    holds: bool,
    evidence: String,
}

impl Claims {
    /// Records whether `what` holds, with the numbers that show it, and prints the verdict.
    pub fn check(&mut self, what: &'static str, holds: bool, evidence: String) {
        println!("  {} {what}: {evidence}", verdict(holds));
        self.checked.push(Claim {
            what,
            holds,
            evidence,
        });
    }

    /// Prints the summary; fails naming every claim that did not hold.
    pub fn finish(self) -> Result<()> {
        println!("\ndemo: summary");
        for claim in &self.checked {
            println!("  {} {}", verdict(claim.holds), claim.what);
        }
        let failed: Vec<String> = self
            .checked
            .iter()
            .filter(|claim| !claim.holds)
            .map(|claim| format!("{} ({})", claim.what, claim.evidence))
            .collect();
        if !failed.is_empty() {
            bail!(
                "demo failed: {} of {} claims did not hold:\n  {}",
                failed.len(),
                self.checked.len(),
                failed.join("\n  ")
            );
        }
        println!("demo: all {} claims hold", self.checked.len());
        Ok(())
    }
}

fn verdict(holds: bool) -> &'static str {
    if holds { "PASS" } else { "FAIL" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failed_claim_fails_the_demo_and_is_named() {
        let mut claims = Claims::default();
        claims.check("the partner gets 200", true, "3 of 3".into());
        claims.check("the attacker is dropped", false, "200 200".into());
        let err = claims.finish().expect_err("a failed claim fails the demo");
        let message = format!("{err:#}");
        assert!(message.contains("1 of 2 claims"), "{message}");
        assert!(
            message.contains("the attacker is dropped (200 200)"),
            "{message}"
        );
        assert!(!message.contains("the partner"), "{message}");
    }

    #[test]
    fn all_claims_holding_pass() {
        let mut claims = Claims::default();
        claims.check("it works", true, "yes".into());
        assert!(claims.finish().is_ok());
    }
}
