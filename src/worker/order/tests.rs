//! The order rules alone (a property over every schedule) and the links that apply them.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

use super::{Chains, Gate, Stage, may_commit, may_index};
use crate::model::{Batch, Position, TopicPartition};

/// Batches of one run, each advanced by a scheduler that picks any unfinished one at each
/// step; `fails[i]`: batch `i` is given up when it would commit (revoked, say).
fn run(fails: &[bool], picks: &[usize]) -> Vec<Stage> {
    let mut stages = vec![Stage::Writing; fails.len()];
    let prev = |stages: &[Stage], i: usize| {
        if i == 0 {
            Stage::Durable
        } else {
            stages[i - 1]
        }
    };
    let step = |stages: &[Stage], i: usize| match stages[i] {
        Stage::Writing => match may_index(prev(stages, i), true) {
            Gate::Go => Stage::Indexed,
            Gate::GiveUp => Stage::NotDurable,
            Gate::Wait => Stage::Writing,
        },
        Stage::Indexed => match may_commit(prev(stages, i), true) {
            Gate::Go if fails[i] => Stage::NotDurable,
            Gate::Go => Stage::Durable,
            Gate::GiveUp => Stage::NotDurable,
            Gate::Wait => Stage::Indexed,
        },
        same => same,
    };
    let mut picks = picks.iter().cycle();
    loop {
        let open: Vec<usize> = (0..stages.len())
            .filter(|&i| matches!(stages[i], Stage::Writing | Stage::Indexed))
            .collect();
        if open.is_empty() {
            break;
        }
        let picked = open[picks.next().copied().unwrap_or(0) % open.len()];
        // A batch that must wait does not move; the earliest open one always can (the one
        // before it has ended), so every schedule ends.
        let i = if step(&stages, picked) != stages[picked] {
            picked
        } else {
            open[0]
        };
        stages[i] = step(&stages, i);
        // The rule under test: a batch is durable only after every earlier one is.
        for j in 0..stages.len() {
            if stages[j] == Stage::Durable {
                assert!(
                    stages[..j].iter().all(|s| *s == Stage::Durable),
                    "batch {j} durable before an earlier one: {stages:?}"
                );
            }
        }
    }
    stages
}

proptest! {
    #[test]
    fn a_later_batch_never_becomes_durable_before_an_earlier_one(
        fails in prop::collection::vec(prop::bool::weighted(0.2), 1..12),
        picks in prop::collection::vec(0usize..16, 1..64),
    ) {
        let stages = run(&fails, &picks);
        // Every schedule ends: each batch durable up to the first failure, given up after it.
        let first_failure = fails.iter().position(|f| *f).unwrap_or(fails.len());
        let want: Vec<Stage> = (0..fails.len())
            .map(|i| if i < first_failure { Stage::Durable } else { Stage::NotDurable })
            .collect();
        prop_assert_eq!(stages, want);
    }
}

fn batch(start: Position, next_offset: i64, assignment: u64) -> Batch {
    let tp = TopicPartition::new("logs", 0);
    Batch {
        tp: tp.clone(),
        stored: tp,
        records: Vec::new(),
        next_offset,
        start,
        gaps: Vec::new(),
        bytes: 0,
        revoked: CancellationToken::new(),
        drain: CancellationToken::new(),
        writing: Arc::new(AtomicUsize::new(0)),
        assignment,
    }
}

#[tokio::test]
async fn a_write_dropped_mid_way_gives_up_the_rest_of_its_run_only() {
    let chains = Chains::default();
    let first = chains.link(&batch(Position::Assigned(Some(0)), 10, 1));
    let mut second = chains.link(&batch(Position::After(10), 20, 1));
    first.reached(Stage::Indexed);
    assert_eq!(second.indexing_turn().await, Ok(()));
    drop(first); // revoked mid-commit
    assert_eq!(
        second.commit_turn().await,
        Err("an earlier batch of this partition was given up")
    );
    drop(second);
    // A third batch of the run does not even send its documents.
    let mut third = chains.link(&batch(Position::After(20), 30, 1));
    assert_eq!(
        third.indexing_turn().await,
        Err("an earlier batch of this partition was given up")
    );
    drop(third);
    // The partition assigned again: its first batch follows nothing of the old run.
    let mut again = chains.link(&batch(Position::Assigned(Some(0)), 10, 2));
    assert_eq!(again.commit_turn().await, Ok(()));
}

#[tokio::test]
async fn a_write_waits_for_the_one_before_it() {
    let chains = Chains::default();
    let first = chains.link(&batch(Position::Assigned(Some(0)), 10, 1));
    let mut second = chains.link(&batch(Position::After(10), 20, 1));
    let waiting = tokio::spawn(async move {
        second.indexing_turn().await?;
        second.commit_turn().await
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    first.reached(Stage::Indexed);
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "indexed is not durable");
    first.reached(Stage::Durable);
    assert_eq!(waiting.await.unwrap(), Ok(()));
}
