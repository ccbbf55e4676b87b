//! The compare-and-set rule of the stored watermark, apart from the transaction that applies
//! it so it can be read and tested alone.

use crate::model::Position;

/// What the batch's transaction does with the stored watermark.
#[derive(Debug, PartialEq, Eq)]
pub enum Advance {
    /// No watermark stored yet and the batch is the first of its assignment: store `next`.
    Insert,
    /// The stored watermark lies inside `[start, next)`: move it to `next`.
    Update,
    /// Already at or past `next`: a replay of durable records, nothing moves.
    Replay,
    /// Offsets below the batch's start are not durable: refuse (the batch is held).
    Hole(String),
}

/// The compare-and-set rule for the stored watermark. `stored` is the row's value (locked),
/// `first`/`next` the batch's offsets. The watermark only ever moves from where this batch
/// starts, so it can never jump over a batch that is not durable.
pub fn advance(stored: Option<i64>, start: Position, first: i64, next: i64) -> Advance {
    let from = match start {
        Position::Assigned(Some(s)) | Position::After(s) => s,
        Position::Assigned(None) => first,
    };
    match stored {
        Some(s) if s >= next => Advance::Replay,
        Some(s) if s >= from => Advance::Update,
        Some(s) => Advance::Hole(format!(
            "stored watermark {s} is below this batch's start {from}: offsets [{s}, {from}) are not durable"
        )),
        None => match start {
            Position::Assigned(_) => Advance::Insert,
            Position::After(s) => Advance::Hole(format!(
                "no stored watermark, but this batch follows one ending at {s} that is not durable"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Position::*;

    #[test]
    fn the_watermark_moves_only_from_inside_the_batch() {
        assert_eq!(advance(None, Assigned(None), 0, 10), Advance::Insert);
        assert_eq!(advance(None, Assigned(Some(50)), 50, 60), Advance::Insert);
        assert!(matches!(advance(None, After(10), 10, 20), Advance::Hole(_)));
        assert_eq!(advance(Some(10), After(10), 10, 20), Advance::Update);
        assert_eq!(advance(Some(12), After(10), 12, 20), Advance::Update);
        assert_eq!(advance(Some(10), Assigned(None), 10, 20), Advance::Update);
        assert_eq!(advance(Some(20), After(10), 10, 20), Advance::Replay);
        assert_eq!(advance(Some(25), Assigned(Some(0)), 0, 20), Advance::Replay);
        assert!(matches!(
            advance(Some(10), After(20), 20, 30),
            Advance::Hole(_)
        ));
        assert!(matches!(
            advance(Some(10), Assigned(None), 20, 30),
            Advance::Hole(_)
        ));
    }
}
