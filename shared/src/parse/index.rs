//! Where each receipt's lines are: what a first pass over a batch's files keeps, so that the
//! batch can then be processed a few receipts at a time, reading only their lines again.
//!
//! Everything the rules decide is per receipt (or per word, inside a receipt), so a batch does
//! not need all its targets, labels and answers in memory at once: one pass over the output and
//! input files records, per receipt, the byte offsets of its lines ([`LineRef`]), and each chunk
//! of receipts then reads its own lines back with positioned reads. The index holds a few dozen
//! bytes per receipt and per line reference; a batch holds at most 50,000 requests
//! (docs/spec/openai-batch.md), whatever the size of its files.

use std::collections::BTreeMap;

use super::input::RequestTargets;
use super::lines::LineRef;
use crate::model::ReceiptKey;

/// The lines of one receipt, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiptLines {
    /// Output-file lines whose `custom_id` names the receipt. A receipt may have several (a
    /// repeated request): all are read, in file order, and the later result wins as usual.
    pub output: Vec<LineRef>,
    /// Input-file lines with at least one target of the receipt.
    pub input: Vec<LineRef>,
    /// Named by the summary's `receipt_refs` or by a `custom_id` of the output or error file
    /// (as [`super::peek_custom_id`] reads it): the receipts whose PENDING labels are the
    /// targets when the input file cannot be read.
    pub named: bool,
    /// The `custom_id` of an input-file request whose targets cannot be read: this receipt's
    /// PENDING labels are among the targets (the fallback, for this receipt only).
    pub targets_unreadable: bool,
}

/// Receipt → its lines, for a whole batch; receipts in [`ReceiptKey`] order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchIndex {
    receipts: BTreeMap<ReceiptKey, ReceiptLines>,
    output_lines: u64,
    input_lines: u64,
}

impl BatchIndex {
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&mut self, receipt: ReceiptKey) -> &mut ReceiptLines {
        self.receipts.entry(receipt).or_default()
    }

    /// An output-file line of `receipt` (lines must be added in file order).
    pub fn add_output(&mut self, receipt: ReceiptKey, line: LineRef) {
        self.output_lines += 1;
        self.entry(receipt).output.push(line);
    }

    /// An input-file request: the line is recorded for every receipt its targets name (one,
    /// normally: a request asks about the labels of its own receipt).
    pub fn add_input(&mut self, line: LineRef, request: &RequestTargets) {
        let mut last: Option<&ReceiptKey> = None;
        for target in &request.targets {
            let receipt = &target.label.word.receipt;
            if last == Some(receipt) {
                continue;
            }
            last = Some(receipt);
            let lines = &mut self.receipts.entry(receipt.clone()).or_default().input;
            if lines.last() != Some(&line) {
                self.input_lines += 1;
                lines.push(line);
            }
        }
    }

    /// A receipt named by `receipt_refs` or by a `custom_id` (see [`ReceiptLines::named`]).
    pub fn add_named(&mut self, receipt: ReceiptKey) {
        self.entry(receipt).named = true;
    }

    /// The receipt of an input-file request whose targets cannot be read (see
    /// [`ReceiptLines::targets_unreadable`]).
    pub fn add_unreadable(&mut self, receipt: ReceiptKey) {
        self.entry(receipt).targets_unreadable = true;
    }

    pub fn get(&self, receipt: &ReceiptKey) -> Option<&ReceiptLines> {
        self.receipts.get(receipt)
    }

    /// Receipts known to the index.
    pub fn len(&self) -> usize {
        self.receipts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.receipts.is_empty()
    }

    /// Output-line references held (a line is referenced once).
    pub fn output_lines(&self) -> u64 {
        self.output_lines
    }

    /// Input-line references held (once per receipt a line has targets of).
    pub fn input_lines(&self) -> u64 {
        self.input_lines
    }

    /// The last receipt (in key order) with output-file lines: the output file is not read
    /// after its chunk.
    pub fn last_with_output(&self) -> Option<&ReceiptKey> {
        self.receipts
            .iter()
            .rev()
            .find(|(_, l)| !l.output.is_empty())
            .map(|(r, _)| r)
    }

    /// The last receipt (in key order) with input-file lines.
    pub fn last_with_input(&self) -> Option<&ReceiptKey> {
        self.receipts
            .iter()
            .rev()
            .find(|(_, l)| !l.input.is_empty())
            .map(|(r, _)| r)
    }

    pub fn receipts(&self) -> impl Iterator<Item = (&ReceiptKey, &ReceiptLines)> {
        self.receipts.iter()
    }

    /// The receipts in order, `per_chunk` at a time (at least one).
    pub fn chunks(&self, per_chunk: usize) -> Chunks<'_> {
        self.chunks_after(None, per_chunk)
    }

    /// The receipts after `after` (all when `None`) in order, `per_chunk` at a time: where a
    /// handling resumes an apply an earlier one finished up to `after`.
    pub fn chunks_after(&self, after: Option<&ReceiptKey>, per_chunk: usize) -> Chunks<'_> {
        use std::ops::Bound::{Excluded, Unbounded};
        let inner = match after {
            Some(after) => self.receipts.range((Excluded(after), Unbounded)),
            None => self.receipts.range::<ReceiptKey, _>(..),
        };
        Chunks {
            inner,
            per_chunk: per_chunk.max(1),
        }
    }
}

/// See [`BatchIndex::chunks`].
#[derive(Debug)]
pub struct Chunks<'a> {
    inner: std::collections::btree_map::Range<'a, ReceiptKey, ReceiptLines>,
    per_chunk: usize,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = Vec<(&'a ReceiptKey, &'a ReceiptLines)>;

    fn next(&mut self) -> Option<Self::Item> {
        let chunk: Vec<_> = self.inner.by_ref().take(self.per_chunk).collect();
        (!chunk.is_empty()).then_some(chunk)
    }
}

/// The distinct lines of a chunk's receipts, sorted by offset (each read once, front to back).
pub fn chunk_lines<'a>(
    receipts: impl IntoIterator<Item = &'a ReceiptLines>,
    which: impl Fn(&'a ReceiptLines) -> &'a [LineRef],
) -> Vec<LineRef> {
    let mut lines: Vec<LineRef> = receipts
        .into_iter()
        .flat_map(|r| which(r).iter().copied())
        .collect();
    lines.sort_unstable();
    lines.dedup();
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ImageId, LabelKey, ValidationStatus};
    use crate::parse::ResultId;

    const IMG_A: &str = "11111111-1111-4111-8111-111111111111";
    const IMG_B: &str = "22222222-2222-4222-8222-222222222222";

    fn receipt(img: &str, r: u32) -> ReceiptKey {
        ReceiptKey {
            image_id: ImageId::parse(img).unwrap(),
            receipt_id: r,
        }
    }

    fn line(offset: u64, line_no: u64) -> LineRef {
        LineRef {
            offset,
            line_no,
            len: 10,
        }
    }

    fn target(img: &str, r: u32, label: &str) -> ResultId {
        ResultId {
            label: LabelKey::new(ImageId::parse(img).unwrap(), r, 1, 1, label),
            status_at_submit: ValidationStatus::None,
        }
    }

    #[test]
    fn receipts_come_in_key_order_with_their_lines_in_file_order() {
        let mut index = BatchIndex::new();
        index.add_output(receipt(IMG_B, 1), line(0, 1));
        index.add_output(receipt(IMG_A, 2), line(11, 2));
        index.add_output(receipt(IMG_B, 1), line(22, 3));
        index.add_named(receipt(IMG_A, 1));
        let request = RequestTargets {
            receipt: None,
            targets: vec![
                target(IMG_A, 2, "DATE"),
                target(IMG_A, 2, "TAX"),
                target(IMG_B, 1, "DATE"),
                target(IMG_A, 2, "TIME"),
            ],
            skipped: Vec::new(),
        };
        index.add_input(line(5, 1), &request);
        let order: Vec<_> = index.receipts().map(|(r, _)| r.clone()).collect();
        assert_eq!(
            order,
            [receipt(IMG_A, 1), receipt(IMG_A, 2), receipt(IMG_B, 1)]
        );
        let b = index.get(&receipt(IMG_B, 1)).unwrap();
        assert_eq!(b.output, [line(0, 1), line(22, 3)]);
        assert_eq!(b.input, [line(5, 1)]);
        assert!(!b.named);
        let a2 = index.get(&receipt(IMG_A, 2)).unwrap();
        assert_eq!(a2.input, [line(5, 1)], "one reference per receipt and line");
        assert!(index.get(&receipt(IMG_A, 1)).unwrap().named);

        assert_eq!(index.output_lines(), 3);
        assert_eq!(index.last_with_output(), Some(&receipt(IMG_B, 1)));
        assert_eq!(index.last_with_input(), Some(&receipt(IMG_B, 1)));
        assert_eq!(index.input_lines(), 2);

        let chunks: Vec<Vec<_>> = index
            .chunks(2)
            .map(|c| c.into_iter().map(|(r, _)| r.receipt_id).collect())
            .collect();
        assert_eq!(chunks, [vec![1, 2], vec![1]]);
        assert_eq!(index.chunks(0).count(), 3);
        let after: Vec<Vec<_>> = index
            .chunks_after(Some(&receipt(IMG_A, 1)), 5)
            .map(|c| c.into_iter().map(|(r, _)| r.clone()).collect())
            .collect();
        assert_eq!(after, [vec![receipt(IMG_A, 2), receipt(IMG_B, 1)]]);
        let not_indexed = receipt(IMG_A, 3); // resumes after a receipt the index lacks
        assert_eq!(index.chunks_after(Some(&not_indexed), 5).count(), 1);
        assert_eq!(index.chunks_after(Some(&receipt(IMG_B, 1)), 5).count(), 0);

        index.add_unreadable(receipt(IMG_B, 2));
        let unreadable = index.get(&receipt(IMG_B, 2)).unwrap();
        assert!(unreadable.targets_unreadable && !unreadable.named);
        assert!(unreadable.input.is_empty() && unreadable.output.is_empty());
        let all = chunk_lines(index.receipts().map(|(_, l)| l), |l| &l.input);
        assert_eq!(
            all,
            [line(5, 1)],
            "a line shared by two receipts is read once"
        );
    }
}
