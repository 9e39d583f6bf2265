//! Linearizability checking of recorded client histories.
//!
//! A torture test records, for every client operation, when it was called, when it returned
//! and what it returned, while faults (kills, pauses, partitions) are injected. This module
//! decides whether such a history is *linearizable* with respect to a sequential [`Model`]:
//! whether every operation can be given a single instant, somewhere between its call and its
//! return, such that applying the operations one at a time in the order of those instants
//! produces exactly the outputs the clients saw. It plays the role of Jepsen's Knossos or of
//! Porcupine, for histories recorded by this crate's tests.
//!
//! It is not a fault injector, not a history recorder and not a general model checker: it
//! checks one finished history against one deterministic model, and says yes, no (with an
//! explanation), or "don't know" when the search exceeds its budget. It never hangs and never
//! panics on any input history; a malformed history (an operation returning before its call)
//! is rejected with [`Verdict::Invalid`].
//!
//! # Indeterminate operations
//!
//! An operation whose client does not know whether it took effect (timeout, lost connection,
//! killed node: Jepsen's `:info`) is recorded as [`Outcome::Indeterminate`]. It may have taken
//! effect at any instant after its call (its return is at +infinity), or never, and its output
//! is unknown: [`Model::step_unknown`] gives the states it may lead to. The search succeeds
//! once every *determinate* operation is placed; indeterminate ones may stay unplaced.
//!
//! # Algorithm
//!
//! The search is the one of Wing and Gong (1993, "Testing and verifying concurrent objects"),
//! with the memoisation of Lowe (2017, "Testing for linearizability"), as popularised by
//! Porcupine:
//!
//! * The calls and returns are sorted by time. At equal times a call sorts *before* a
//!   return: two operations that touch the same instant (one returns at `t`, the other is
//!   called at `t`) are treated as concurrent, which can only make more histories
//!   linearizable, never fewer (the clock's resolution cannot order them). Determinate
//!   operations' calls and returns form one doubly linked list; indeterminate operations have
//!   no return event (it is at +infinity) and their calls are kept apart (below).
//! * The calls before the first return of the list are the operations that may take effect
//!   next. The search tries one: if the model accepts it from the current state, its entries
//!   are unlinked ("lifted"), it is pushed on a stack with the state before it, and the walk
//!   restarts from the head. Reaching a return means that operation had to be placed
//!   already: the search backtracks by popping the stack, relinking the operation
//!   ("unlifting") and trying the next candidate. Indeterminate operations called before
//!   that return are candidates too, tried after the determinate ones.
//! * Lowe's cache: a configuration is the set of placed operations (a bitset) and the model
//!   state. The rest of the search depends only on the configuration, so a configuration
//!   already explored without success is never explored again.
//!
//! Indeterminate operations make the search much larger (with a hundred pending timed-out
//! writes there are 2^100 subsets of "which of them happened"), so it has a few more rules,
//! none of which loses a linearization:
//!
//! * [`Model::indeterminate_hints`] may say that an indeterminate operation can be *dropped*
//!   (a read that timed out constrains nothing), or that several are *interchangeable*, with a
//!   common stand-in input (writes of values nobody ever reads back all become one "unread
//!   write"). Interchangeable operations are placed in the order of their calls, so only
//!   their number counts.
//! * Dominance: leaving an indeterminate operation unplaced is never an obligation, so a
//!   failed configuration also rules out every configuration with the same determinate
//!   operations placed, the same state, and a superset of its indeterminate ones placed (of
//!   each class, at least as many). Determinate candidates are tried first, so that the
//!   configurations with fewer indeterminate operations placed tend to fail first.
//! * An indeterminate operation is not placed where it changes nothing, nor where it only
//!   leads back to an earlier state of the stack, or where the run of indeterminate
//!   operations it ends leads where it alone would have led (a lost write then a lost delete:
//!   the delete alone does the same).
//! * A determinate operation that leaves the state unchanged (a read that fits) is placed as
//!   soon as it can be, with no alternative tried: any linearization can be rearranged to
//!   place it there.
//!
//! # Cost
//!
//! A linearizable history is usually found quickly: the search is greedy and backtracks
//! little (a 2,000-operation register history of 5 clients with 5% lost operations takes
//! tens of milliseconds in a debug build). Proving a history *not* linearizable needs an
//! exhaustive search of every explanation of what came before the violation, and with many
//! pending lost operations that can be large: on such histories, it grows with the number of
//! lost writes pending at the violation, and faster with lost conditional writes and deletes
//! (which make "which of them happened" truly ambiguous). The search is bounded by a budget of
//! steps and reports [`Verdict::Unknown`] beyond it; a test should treat that as a failure to
//! look at, not as a pass. Histories are partitioned per key by [`check_keyed`] (each key of a
//! key-value store is an independent register), which keeps each search small.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{Debug, Write as _};
use std::hash::{Hash, Hasher};

/// Time in nanoseconds since the history's start (a monotonic clock, e.g. `Instant` elapsed).
pub type Nanos = u64;

/// A model: a deterministic sequential specification of the object under test.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Clone + Debug;
    type Output: Clone + Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`; returns the next state if `output` is a possible answer,
    /// `None` otherwise.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;

    /// The states `input` may lead to from `state` if it takes effect and its output is
    /// unknown (an indeterminate operation). "It never took effect" need not be listed: the
    /// search covers it by leaving the operation out.
    fn step_unknown(&self, state: &Self::State, input: &Self::Input) -> Vec<Self::State>;

    /// Optional hints on the indeterminate operations of `history`, one per operation (index
    /// for index; entries of determinate operations and missing entries are ignored and mean
    /// [`IndeterminateHint::Keep`]). The default gives no hints. See [`IndeterminateHint`]
    /// for what each hint promises: a wrong hint makes the verdict wrong.
    fn indeterminate_hints(
        &self,
        history: &[Operation<Self::Input, Self::Output>],
    ) -> Vec<IndeterminateHint<Self::Input>> {
        let _ = history;
        Vec::new()
    }
}

/// How the search may treat one indeterminate operation (see
/// [`Model::indeterminate_hints`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndeterminateHint<I> {
    /// No hint: the operation may take effect at any point after its call, or never.
    Keep,
    /// Leaving the operation out cannot turn a linearizable history into a non-linearizable
    /// one (a read, which changes nothing; a write of a value no other operation mentions,
    /// when outputs do not depend on it). It is removed before the search.
    Drop,
    /// The search may use `input` in place of the operation's own, and every indeterminate
    /// operation of the same `class` has that same `input`: they are then interchangeable, and
    /// are placed in the order of their calls, which is enough. The promise: substituting
    /// `input` changes no verdict (for instance, the operation writes a value that no other
    /// operation mentions, and `input` writes a value that no operation can observe).
    Interchangeable { class: u64, input: I },
}

/// One client operation as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Who issued it (only used in explanations; a client need not be sequential).
    pub client: u64,
    pub input: I,
    /// When the client issued it.
    pub call: Nanos,
    pub ret: Outcome<O>,
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<O> {
    /// The client received `output` at `at` (which must not be before the call).
    Ok { output: O, at: Nanos },
    /// The client does not know whether it took effect (timeout, connection lost, node
    /// killed): it may have taken effect at any point after `call`, or never.
    Indeterminate,
}

/// The result of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable {
        /// A human-readable explanation: the longest linearizable prefix found and the
        /// operations that could not be placed after it.
        explanation: String,
    },
    /// The search exceeded its budget (bounded: never hang a test).
    Unknown {
        /// Search steps taken.
        explored: u64,
    },
    /// The history itself is malformed (an operation returned before it was called); it is
    /// not checked.
    Invalid {
        reason: String,
    },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// Checks a whole history against `model`, taking at most `budget` search steps.
///
/// Operations are named in explanations by their index in `history` (`op #3`).
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: u64,
) -> Verdict {
    let labels: Vec<usize> = (0..history.len()).collect();
    check_labelled(model, history, &labels, budget)
}

/// One operation of a keyed history: the key and the operation on it.
pub type Keyed<K, M> = (K, Operation<<M as Model>::Input, <M as Model>::Output>);

/// Checks a history of independent keys: groups the operations by key and checks each key's
/// sub-history on its own (each with the full `budget`), in key order.
///
/// Returns `Err` naming the first key that is not linearizable, with the explanation (its
/// operations are named by their index in `history`), or whose search ran out of budget (an
/// unknown verdict is not a pass), or whose history is malformed.
pub fn check_keyed<K: Ord + Debug, M: Model>(
    model: &M,
    history: &[Keyed<K, M>],
    budget: u64,
) -> Result<(), String> {
    let mut by_key: BTreeMap<&K, Vec<usize>> = BTreeMap::new();
    for (i, (k, _)) in history.iter().enumerate() {
        by_key.entry(k).or_default().push(i);
    }
    for (key, indices) in by_key {
        let ops: Vec<_> = indices.iter().map(|&i| history[i].1.clone()).collect();
        match check_labelled(model, &ops, &indices, budget) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { explanation } => {
                return Err(format!(
                    "key {key:?} is not linearizable ({} operations): {explanation}",
                    ops.len()
                ));
            }
            Verdict::Unknown { explored } => {
                return Err(format!(
                    "key {key:?}: the search budget ran out after {explored} steps \
                     ({} operations); linearizability is unknown",
                    ops.len()
                ));
            }
            Verdict::Invalid { reason } => {
                return Err(format!("key {key:?}: malformed history: {reason}"));
            }
        }
    }
    Ok(())
}

/// [`check`], naming `history[i]` as `op #labels[i]`.
fn check_labelled<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    labels: &[usize],
    budget: u64,
) -> Verdict {
    let label = |i: usize| labels.get(i).copied().unwrap_or(i);
    for (i, op) in history.iter().enumerate() {
        if let Outcome::Ok { at, .. } = op.ret {
            if at < op.call {
                return Verdict::Invalid {
                    reason: format!(
                        "op #{} (client {}) returned at {at} ns, before its call at {} ns",
                        label(i),
                        op.client,
                        op.call
                    ),
                };
            }
        }
    }
    let mut search = Search::new(model, history, labels);
    search.run(budget)
}

/// Sentinels of the two lists: the main list of determinate calls and returns (`HEAD` to
/// `TAIL`), and the list of the other indeterminate calls (`KEEP_HEAD` to `KEEP_TAIL`).
/// Event nodes are `FIRST_NODE..`, numbered in event order, so that comparing two nodes
/// compares their events' order.
const HEAD: usize = 0;
const TAIL: usize = 1;
const KEEP_HEAD: usize = 2;
const KEEP_TAIL: usize = 3;
const FIRST_NODE: usize = 4;

/// The cursor of a configuration with no candidate left: backtrack.
const EXHAUSTED: Cursor = Cursor::Class(usize::MAX);

/// One operation taking part in the search.
struct OpInfo {
    /// Index in the history.
    index: usize,
    call_node: usize,
    /// `None` for an indeterminate operation (its return is at +infinity).
    ret_node: Option<usize>,
    /// Interchangeability class (dense index) and rank by call within it. Such operations
    /// are in neither list: the next one of a class is `members[class][counts[class]]`.
    class: Option<(usize, u32)>,
}

/// Where the walk over the operations that may go next is.
///
/// Determinate candidates are tried first (the calls before the first return of the main
/// list), then indeterminate ones with a call before that return (`limit`): the ones without
/// a class, then the next of each class. Trying "fewer lost operations took effect" first is
/// what lets a failed configuration rule out the ones with more of them.
#[derive(Clone, Copy)]
enum Cursor {
    Det(usize),
    Keep(usize),
    Class(usize),
}

/// A stack entry: an operation placed, the state before it, and the states it could lead to
/// (`alts[alt]` was taken). `forced`: a determinate operation that left the state unchanged,
/// placed as soon as it could be; if it fails, so does the configuration before it.
struct Frame<S> {
    op: usize,
    prev: S,
    alts: Vec<S>,
    alt: usize,
    forced: bool,
    /// For an indeterminate operation: the stack index of the first frame of the run of
    /// indeterminate frames it belongs to (that frame's `prev` is the run's root state).
    root: usize,
}

/// What [`Search::try_place`] did.
#[derive(PartialEq, Eq)]
enum Placement {
    Placed,
    NotPlaced,
    /// A forced placement is known to fail: so does the current configuration.
    Fails,
}

/// An explored configuration that led nowhere.
struct Failed<S> {
    bits: Vec<u64>,
    counts: Vec<u32>,
    state: S,
}

struct Search<'a, M: Model> {
    model: &'a M,
    history: &'a [Operation<M::Input, M::Output>],
    labels: &'a [usize],
    ops: Vec<OpInfo>,
    /// Inputs given by [`IndeterminateHint::Interchangeable`], used instead of the recorded
    /// ones.
    inputs: Vec<Option<M::Input>>,
    /// The members of each class, in call order.
    members: Vec<Vec<usize>>,
    /// Doubly linked lists over nodes.
    prev: Vec<usize>,
    next: Vec<usize>,
    /// For each event node: its operation and whether it is the call (else the return).
    node_op: Vec<usize>,
    node_call: Vec<bool>,
    /// Per-operation random keys: the hash of the bitset's determinate part is the XOR of its
    /// members' keys.
    zobrist: Vec<u64>,
    /// The bits of determinate operations.
    det_mask: Vec<u64>,
    n_det: usize,

    // The configuration.
    state: M::State,
    bits: Vec<u64>,
    bits_hash: u64,
    counts: Vec<u32>,
    placed_det: usize,
    stack: Vec<Frame<M::State>>,
    /// For each operation, the index of its frame (`usize::MAX`: not placed).
    placed_at: Vec<usize>,
    failed: HashMap<u64, Vec<Failed<M::State>>>,

    // The deepest prefix seen, for explanations.
    best_det: usize,
    best_seq: Vec<usize>,
    best_state: M::State,
}

impl<'a, M: Model> Search<'a, M> {
    fn new(
        model: &'a M,
        history: &'a [Operation<M::Input, M::Output>],
        labels: &'a [usize],
    ) -> Self {
        let hints = model.indeterminate_hints(history);
        let mut ops = Vec::new();
        let mut classes: HashMap<u64, usize> = HashMap::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        let mut canonical: Vec<(usize, M::Input)> = Vec::new();
        // (time, 0 = call / 1 = return, op): calls sort before returns at equal times.
        let mut events: Vec<(Nanos, u8, usize)> = Vec::new();
        for (index, op) in history.iter().enumerate() {
            let hint = match op.ret {
                Outcome::Ok { .. } => None,
                Outcome::Indeterminate => hints.get(index),
            };
            let id = ops.len();
            let class = match hint {
                Some(IndeterminateHint::Drop) => continue,
                None | Some(IndeterminateHint::Keep) => None,
                Some(IndeterminateHint::Interchangeable { class: c, input }) => {
                    canonical.push((id, input.clone()));
                    let n = classes.len();
                    let dense = *classes.entry(*c).or_insert(n);
                    if dense == members.len() {
                        members.push(Vec::new());
                    }
                    members[dense].push(id);
                    Some((dense, 0))
                }
            };
            events.push((op.call, 0, id));
            if let Outcome::Ok { at, .. } = op.ret {
                events.push((at, 1, id));
            }
            ops.push(OpInfo {
                index,
                call_node: 0,
                ret_node: None,
                class,
            });
        }
        let mut inputs: Vec<Option<M::Input>> = vec![None; ops.len()];
        for (id, input) in canonical {
            inputs[id] = Some(input);
        }
        events.sort_unstable();

        let n_nodes = events.len() + FIRST_NODE;
        let mut prev = vec![HEAD; n_nodes];
        let mut next = vec![TAIL; n_nodes];
        let mut node_op = vec![usize::MAX; n_nodes];
        let mut node_call = vec![false; n_nodes];
        let (mut last, mut last_keep) = (HEAD, KEEP_HEAD);
        for (pos, &(_, kind, id)) in events.iter().enumerate() {
            let node = pos + FIRST_NODE;
            node_op[node] = id;
            node_call[node] = kind == 0;
            if kind == 0 {
                ops[id].call_node = node;
            } else {
                ops[id].ret_node = Some(node);
            }
            let tail = if matches!(history[ops[id].index].ret, Outcome::Ok { .. }) {
                &mut last
            } else if ops[id].class.is_none() {
                &mut last_keep
            } else {
                continue;
            };
            next[*tail] = node;
            prev[node] = *tail;
            *tail = node;
        }
        next[last] = TAIL;
        prev[TAIL] = last;
        next[last_keep] = KEEP_TAIL;
        prev[KEEP_TAIL] = last_keep;

        // Interchangeable operations are placed in the order of their calls.
        for list in &mut members {
            list.sort_by_key(|&id| ops[id].call_node);
            for (rank, &id) in list.iter().enumerate() {
                if let Some((c, _)) = ops[id].class {
                    ops[id].class = Some((c, u32::try_from(rank).unwrap_or(u32::MAX)));
                }
            }
        }

        let n_det = ops.iter().filter(|o| o.ret_node.is_some()).count();
        let n_ops = ops.len();
        let zobrist = (0..n_ops as u64).map(splitmix64).collect();
        let mut det_mask = vec![0u64; ops.len().div_ceil(64)];
        for (id, op) in ops.iter().enumerate() {
            if op.ret_node.is_some() {
                det_mask[id / 64] |= 1 << (id % 64);
            }
        }
        let init = model.init();
        Search {
            model,
            history,
            labels,
            bits: vec![0; ops.len().div_ceil(64)],
            ops,
            inputs,
            counts: vec![0; members.len()],
            members,
            prev,
            next,
            node_op,
            node_call,
            zobrist,
            det_mask,
            n_det,
            state: init.clone(),
            bits_hash: 0,
            placed_det: 0,
            stack: Vec::new(),
            placed_at: vec![usize::MAX; n_ops],
            failed: HashMap::new(),
            best_det: 0,
            best_seq: Vec::new(),
            best_state: init,
        }
    }

    fn run(&mut self, budget: u64) -> Verdict {
        let mut explored = 0u64;
        let mut cur = Cursor::Det(self.next[HEAD]);
        let mut limit = usize::MAX;
        loop {
            if self.placed_det == self.n_det {
                return Verdict::Linearizable;
            }
            if explored >= budget {
                return Verdict::Unknown { explored };
            }
            explored += 1;
            let placed = match cur {
                Cursor::Det(node) if node != TAIL && self.node_call[node] => {
                    cur = Cursor::Det(self.next[node]);
                    let placement = self.try_op(self.node_op[node]);
                    if placement == Placement::Fails {
                        cur = EXHAUSTED;
                    }
                    placement == Placement::Placed
                }
                Cursor::Det(node) => {
                    // The first return: the determinate candidates are exhausted.
                    limit = if node == TAIL { usize::MAX } else { node };
                    cur = Cursor::Keep(self.next[KEEP_HEAD]);
                    false
                }
                Cursor::Keep(node) if node != KEEP_TAIL && node < limit => {
                    cur = Cursor::Keep(self.next[node]);
                    self.try_op(self.node_op[node]) == Placement::Placed
                }
                Cursor::Keep(_) => {
                    cur = Cursor::Class(0);
                    false
                }
                Cursor::Class(c) if c < self.members.len() => {
                    cur = Cursor::Class(c + 1);
                    let head = self.counts[c] as usize;
                    match self.members[c].get(head) {
                        Some(&op) if self.ops[op].call_node < limit => {
                            self.try_op(op) == Placement::Placed
                        }
                        _ => false,
                    }
                }
                Cursor::Class(_) => {
                    // Every candidate was tried: the configuration fails. Backtrack.
                    let Some(Frame {
                        op,
                        prev,
                        alts,
                        alt,
                        forced,
                        ..
                    }) = self.stack.pop()
                    else {
                        return Verdict::NotLinearizable {
                            explanation: self.explain(explored),
                        };
                    };
                    self.remember_failed();
                    self.state = prev;
                    self.placed_at[op] = usize::MAX;
                    self.unlift(op);
                    self.unmark(op);
                    if forced {
                        cur = EXHAUSTED;
                        continue;
                    }
                    let info = &self.ops[op];
                    cur = match (info.ret_node, info.class) {
                        (Some(_), _) => Cursor::Det(self.next[info.call_node]),
                        (None, None) => Cursor::Keep(self.next[info.call_node]),
                        (None, Some((c, _))) => Cursor::Class(c + 1),
                    };
                    if info.ret_node.is_none() {
                        limit = self.first_return();
                    }
                    self.try_place(op, alts, alt + 1) == Placement::Placed
                }
            };
            if placed {
                cur = Cursor::Det(self.next[HEAD]);
            }
        }
    }

    /// The first return in the main list (`usize::MAX` if none).
    fn first_return(&self) -> usize {
        let mut node = self.next[HEAD];
        while node != TAIL && self.node_call[node] {
            node = self.next[node];
        }
        if node == TAIL {
            usize::MAX
        } else {
            node
        }
    }

    /// The states `op` may lead to from `state` (none: the model refuses it).
    fn successors(&self, op: usize, state: &M::State) -> Vec<M::State> {
        let rec = &self.history[self.ops[op].index];
        let input = self.inputs[op].as_ref().unwrap_or(&rec.input);
        match &rec.ret {
            Outcome::Ok { output, .. } => {
                self.model.step(state, input, output).into_iter().collect()
            }
            Outcome::Indeterminate => self.model.step_unknown(state, input),
        }
    }

    fn try_op(&mut self, op: usize) -> Placement {
        let alts = self.successors(op, &self.state);
        self.try_place(op, alts, 0)
    }

    /// Places `op`, leading to the first of `alts[start..]` that is worth exploring.
    ///
    /// Reductions, none of which loses a linearization (each skipped configuration is
    /// dominated by one that failed, is on the stack, or is tried from the stack):
    /// * an indeterminate operation that would leave the state unchanged is not placed
    ///   (leaving it out is the same);
    /// * nor one that would return to an earlier state of the stack with nothing but
    ///   indeterminate operations placed since: that earlier configuration has every option
    ///   this one has;
    /// * nor one that leads where it would lead from the root of the run of indeterminate
    ///   operations it ends ([`Search::absorbed`]);
    /// * a determinate operation that leaves the state unchanged (a read) is *forced*: any
    ///   linearization from here can be rearranged to place it first, as it is already
    ///   callable and nothing before it can notice it, so no other candidate is tried here;
    /// * a configuration dominated by a failed one ([`Search::known_to_fail`]) is skipped.
    fn try_place(&mut self, op: usize, alts: Vec<M::State>, start: usize) -> Placement {
        let indeterminate = self.ops[op].ret_node.is_none();
        for alt in start..alts.len() {
            let stutter = alts[alt] == self.state;
            if indeterminate
                && (stutter
                    || self.returns_to_ancestor(&alts[alt])
                    || self.absorbed(op, &alts[alt]))
            {
                continue;
            }
            let forced = stutter && !indeterminate;
            self.mark(op);
            if self.known_to_fail(&alts[alt]) {
                self.unmark(op);
                if forced {
                    return Placement::Fails;
                }
                continue;
            }
            let prev = std::mem::replace(&mut self.state, alts[alt].clone());
            self.lift(op);
            let index = self.stack.len();
            let root = match self.stack.last() {
                Some(top) if indeterminate && self.ops[top.op].ret_node.is_none() => top.root,
                _ => index,
            };
            self.placed_at[op] = index;
            self.stack.push(Frame {
                op,
                prev,
                alts,
                alt,
                forced,
                root,
            });
            if self.placed_det > self.best_det {
                self.best_det = self.placed_det;
                self.best_seq = self.stack.iter().map(|f| f.op).collect();
                self.best_state = self.state.clone();
            }
            return Placement::Placed;
        }
        Placement::NotPlaced
    }

    /// Whether placing the indeterminate `op`, leading to `state`, on top of a run of
    /// indeterminate frames, leads where `op` leads from the run's root (a lost write, then a
    /// lost delete: the delete alone does the same). Placing `op` right at the root has every
    /// option this has, and is (or was) tried there.
    fn absorbed(&self, op: usize, state: &M::State) -> bool {
        let Some(top) = self.stack.last() else {
            return false;
        };
        if self.ops[top.op].ret_node.is_some() {
            return false;
        }
        let root = top.root;
        // A class member is a candidate at the root only if the member before it was placed
        // before the root.
        if let Some((c, rank)) = self.ops[op].class {
            let earlier = rank
                .checked_sub(1)
                .and_then(|r| self.members[c].get(r as usize));
            if earlier.is_some_and(|&m| self.placed_at[m] >= root) {
                return false;
            }
        }
        self.successors(op, &self.stack[root].prev)
            .iter()
            .any(|s| s == state)
    }

    /// Whether placing an indeterminate operation, leading to `state`, returns to the state of
    /// a configuration on the stack from which only indeterminate operations were placed (so
    /// that it dominates the new one).
    fn returns_to_ancestor(&self, state: &M::State) -> bool {
        self.stack
            .iter()
            .rev()
            .take_while(|f| self.ops[f.op].ret_node.is_none())
            .any(|f| f.prev == *state)
    }

    fn config_hash(&self, state: &M::State) -> u64 {
        let mut h = DefaultHasher::new();
        self.bits_hash.hash(&mut h);
        state.hash(&mut h);
        h.finish()
    }

    /// Whether configuration `a` has every option `b` has (for two configurations with the
    /// same state): the same determinate operations placed, and no indeterminate operation
    /// placed that `b` has not placed (of a class: no more of it). An indeterminate operation
    /// left unplaced is never an obligation, so whatever works from `b` works from `a`.
    fn dominates(&self, a: (&[u64], &[u32]), b: (&[u64], &[u32])) -> bool {
        a.0.iter()
            .zip(b.0)
            .zip(&self.det_mask)
            .all(|((x, y), det)| (x ^ y) & det == 0 && x & !y == 0)
            && a.1.iter().zip(b.1).all(|(x, y)| x <= y)
    }

    /// Whether the current configuration, with `state`, is dominated by one that failed.
    fn known_to_fail(&self, state: &M::State) -> bool {
        self.failed
            .get(&self.config_hash(state))
            .is_some_and(|bucket| {
                bucket.iter().any(|f| {
                    f.state == *state
                        && self.dominates((&f.bits, &f.counts), (&self.bits, &self.counts))
                })
            })
    }

    /// Records the current configuration as failed.
    fn remember_failed(&mut self) {
        let h = self.config_hash(&self.state);
        let mut bucket = self.failed.remove(&h).unwrap_or_default();
        // Drop what the new entry dominates.
        bucket.retain(|f| {
            !(f.state == self.state
                && self.dominates((&self.bits, &self.counts), (&f.bits, &f.counts)))
        });
        bucket.push(Failed {
            bits: self.bits.clone(),
            counts: self.counts.clone(),
            state: self.state.clone(),
        });
        self.failed.insert(h, bucket);
    }

    fn mark(&mut self, op: usize) {
        match self.ops[op].class {
            Some((c, _)) => self.counts[c] += 1,
            None => self.bits[op / 64] |= 1 << (op % 64),
        }
        if self.ops[op].ret_node.is_some() {
            self.placed_det += 1;
            self.bits_hash ^= self.zobrist[op];
        }
    }

    fn unmark(&mut self, op: usize) {
        match self.ops[op].class {
            Some((c, _)) => self.counts[c] = self.counts[c].saturating_sub(1),
            None => self.bits[op / 64] &= !(1 << (op % 64)),
        }
        if self.ops[op].ret_node.is_some() {
            self.placed_det = self.placed_det.saturating_sub(1);
            self.bits_hash ^= self.zobrist[op];
        }
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    /// Undoes `unlink(node)`; unlinks must be undone in reverse order.
    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[n] = node;
    }

    /// Takes a placed operation out of its list (class members are in none).
    fn lift(&mut self, op: usize) {
        if self.ops[op].class.is_some() {
            return;
        }
        self.unlink(self.ops[op].call_node);
        if let Some(r) = self.ops[op].ret_node {
            self.unlink(r);
        }
    }

    fn unlift(&mut self, op: usize) {
        if self.ops[op].class.is_some() {
            return;
        }
        if let Some(r) = self.ops[op].ret_node {
            self.relink(r);
        }
        self.relink(self.ops[op].call_node);
    }

    fn describe(&self, op: usize) -> String {
        let index = self.ops[op].index;
        let rec = &self.history[index];
        let label = self.labels.get(index).copied().unwrap_or(index);
        match &rec.ret {
            Outcome::Ok { output, at } => format!(
                "op #{label} (client {}): {:?} -> {:?}, called at {} ns, returned at {at} ns",
                rec.client, rec.input, output, rec.call
            ),
            Outcome::Indeterminate => format!(
                "op #{label} (client {}): {:?} -> indeterminate, called at {} ns",
                rec.client, rec.input, rec.call
            ),
        }
    }

    /// Explains the failure from the deepest prefix found.
    fn explain(&self, explored: u64) -> String {
        const SHOW: usize = 10;
        let mut placed = vec![false; self.ops.len()];
        for &op in &self.best_seq {
            placed[op] = true;
        }
        let mut s = String::new();
        let _ = write!(
            s,
            "no linearization exists ({explored} search steps). The longest linearizable \
             prefix found places {} of the {} determinate operations",
            self.best_det, self.n_det
        );
        if self.best_seq.is_empty() {
            let _ = writeln!(s, "; no operation can go first from {:?}.", self.best_state);
        } else {
            let skipped = self.best_seq.len().saturating_sub(SHOW);
            let _ = writeln!(
                s,
                "; in linearization order{}:",
                if skipped > 0 {
                    format!(", after {skipped} earlier ones")
                } else {
                    String::new()
                }
            );
            for &op in &self.best_seq[skipped..] {
                let _ = writeln!(s, "  {}", self.describe(op));
            }
            let _ = writeln!(s, "leaving the state {:?}.", self.best_state);
        }
        // The first unplaced determinate operation to return had to be placed by then.
        let blocking = (0..self.ops.len())
            .filter(|&op| !placed[op])
            .filter_map(|op| self.ops[op].ret_node.map(|r| (r, op)))
            .min();
        let Some((ret_node, blocking)) = blocking else {
            return s;
        };
        let _ = writeln!(
            s,
            "Then {} must take effect before it returns, but no operation that may go next \
             leads to a complete linearization:",
            self.describe(blocking)
        );
        let mut candidates: Vec<usize> = (0..self.ops.len())
            .filter(|&op| !placed[op] && self.ops[op].call_node < ret_node)
            .collect();
        candidates.sort_by_key(|&op| self.ops[op].call_node);
        for &op in candidates.iter().take(SHOW) {
            let why = if self.successors(op, &self.best_state).is_empty() {
                "the model refuses it from that state"
            } else {
                "the model accepts it, but nothing works after it"
            };
            let _ = writeln!(s, "  {}: {why}", self.describe(op));
        }
        if candidates.len() > SHOW {
            let _ = writeln!(s, "  and {} more", candidates.len() - SHOW);
        }
        s
    }
}

/// A 64-bit mixer (SplitMix64's finaliser), for the bitset hash keys.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A register: one key of a store where every write bumps a generation (a pipeline's spec).
///
/// The state is `None` (absent) or `Some((value, generation))`:
/// * a write of a value different from the current one sets the generation to the current
///   one plus 1 (1 if the key is absent); a write of the *same* value leaves the generation
///   unchanged (an idempotent apply) and still reports it;
/// * a delete makes the key absent; a later write starts again at generation 1 (as
///   `flowctl-state` does for a pipeline deleted and created again);
/// * [`RegisterInput::WriteIfGeneration`] writes (with the rules above) only if the current
///   generation is the expected one, 0 meaning "absent";
/// * [`RegisterOutput::Failed`] is a definite refusal that changed nothing, accepted for any
///   input from any state.
///
/// Its hints drop lost reads, make lost deletes interchangeable, and replace every lost write
/// whose value no other operation mentions by [`RegisterInput::UnreadWrite`]: nothing can
/// tell such writes apart, only how many happened.
#[derive(Debug, Clone, Copy, Default)]
pub struct Register;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterInput {
    Read,
    Write(String),
    Delete,
    WriteIfGeneration {
        value: String,
        generation: u64,
    },
    /// A write (conditional, like `WriteIfGeneration`, if `if_generation` is set) of a value
    /// that no operation of the history mentions: the checker's stand-in for a lost write
    /// whose value never shows up. Such a value differs from every other one, so the write
    /// always bumps the generation. Recorded histories have no use for it.
    UnreadWrite {
        if_generation: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterOutput {
    /// The value and generation read (`None`: absent).
    Read(Option<(String, u64)>),
    Written {
        generation: u64,
    },
    /// Deleting an absent key is `Deleted { existed: false }`, not a failure.
    Deleted {
        existed: bool,
    },
    CasOk {
        generation: u64,
    },
    /// The generation did not match; nothing changed.
    CasFailed,
    /// A definite refusal that changed nothing.
    Failed,
}

/// A value held by the register's state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterValue {
    Known(String),
    /// Written by a [`RegisterInput::UnreadWrite`]: equal to nothing, not even to another
    /// unread value.
    Unread,
}

/// The register's state: `None` = absent, else `(value, generation)`.
pub type RegisterState = Option<(RegisterValue, u64)>;

impl Register {
    /// The state after writing `value` (`None`: an unread one) on `state`, and its generation.
    fn write(state: &RegisterState, value: Option<&str>) -> (RegisterState, u64) {
        let generation = match (state, value) {
            (Some((RegisterValue::Known(v), g)), Some(value)) if v == value => *g,
            (Some((_, g)), _) => g.saturating_add(1),
            (None, _) => 1,
        };
        let value = value.map_or(RegisterValue::Unread, |v| {
            RegisterValue::Known(v.to_owned())
        });
        (Some((value, generation)), generation)
    }

    /// The next state and the output of `input` on `state` (a correct register). A read of
    /// an unread value has no possible output: `None`.
    fn apply(
        state: &RegisterState,
        input: &RegisterInput,
    ) -> (RegisterState, Option<RegisterOutput>) {
        let conditional = |expected: u64, value: Option<&str>| {
            let current = state.as_ref().map_or(0, |(_, g)| *g);
            if current == expected {
                let (next, generation) = Self::write(state, value);
                (next, Some(RegisterOutput::CasOk { generation }))
            } else {
                (state.clone(), Some(RegisterOutput::CasFailed))
            }
        };
        match input {
            RegisterInput::Read => {
                let seen = match state {
                    None => Some(None),
                    Some((RegisterValue::Known(v), g)) => Some(Some((v.clone(), *g))),
                    Some((RegisterValue::Unread, _)) => None,
                };
                (state.clone(), seen.map(RegisterOutput::Read))
            }
            RegisterInput::Write(value) => {
                let (next, generation) = Self::write(state, Some(value));
                (next, Some(RegisterOutput::Written { generation }))
            }
            RegisterInput::Delete => (
                None,
                Some(RegisterOutput::Deleted {
                    existed: state.is_some(),
                }),
            ),
            RegisterInput::WriteIfGeneration { value, generation } => {
                conditional(*generation, Some(value))
            }
            RegisterInput::UnreadWrite {
                if_generation: Some(expected),
            } => conditional(*expected, None),
            RegisterInput::UnreadWrite {
                if_generation: None,
            } => {
                let (next, generation) = Self::write(state, None);
                (next, Some(RegisterOutput::Written { generation }))
            }
        }
    }
}

impl Model for Register {
    type State = RegisterState;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> RegisterState {
        None
    }

    fn step(
        &self,
        state: &RegisterState,
        input: &RegisterInput,
        output: &RegisterOutput,
    ) -> Option<RegisterState> {
        if *output == RegisterOutput::Failed {
            return Some(state.clone());
        }
        let (next, expected) = Self::apply(state, input);
        (expected.as_ref() == Some(output)).then_some(next)
    }

    fn step_unknown(&self, state: &RegisterState, input: &RegisterInput) -> Vec<RegisterState> {
        vec![Self::apply(state, input).0]
    }

    /// Reads are dropped. Deletes are all interchangeable. Writes (plain, or conditional on
    /// the same generation) of values that no other operation mentions (as input, or in a
    /// read's output) become [`RegisterInput::UnreadWrite`]s: such a value always differs
    /// from the current one, so its write always bumps the generation, and nothing else
    /// about it can be observed.
    fn indeterminate_hints(
        &self,
        history: &[Operation<RegisterInput, RegisterOutput>],
    ) -> Vec<IndeterminateHint<RegisterInput>> {
        const DELETE: u64 = 0;
        const UNREAD: u64 = 1;
        const CONDITIONAL_BASE: u64 = 2;
        let mut mentions: HashMap<&str, usize> = HashMap::new();
        for op in history {
            match &op.input {
                RegisterInput::Write(v) | RegisterInput::WriteIfGeneration { value: v, .. } => {
                    *mentions.entry(v.as_str()).or_default() += 1;
                }
                RegisterInput::Read | RegisterInput::Delete | RegisterInput::UnreadWrite { .. } => {
                }
            }
            if let Outcome::Ok {
                output: RegisterOutput::Read(Some((v, _))),
                ..
            } = &op.ret
            {
                *mentions.entry(v.as_str()).or_default() += 1;
            }
        }
        let alone = |v: &String| mentions.get(v.as_str()).copied().unwrap_or(0) <= 1;
        let unread = |if_generation: Option<u64>| {
            let class = match if_generation {
                None => Some(UNREAD),
                Some(g) => g.checked_add(CONDITIONAL_BASE),
            };
            match class {
                Some(class) => IndeterminateHint::Interchangeable {
                    class,
                    input: RegisterInput::UnreadWrite { if_generation },
                },
                None => IndeterminateHint::Keep,
            }
        };
        history
            .iter()
            .map(|op| match &op.input {
                RegisterInput::Read => IndeterminateHint::Drop,
                RegisterInput::Delete => IndeterminateHint::Interchangeable {
                    class: DELETE,
                    input: RegisterInput::Delete,
                },
                RegisterInput::Write(v) if alone(v) => unread(None),
                RegisterInput::WriteIfGeneration { value, generation } if alone(value) => {
                    unread(Some(*generation))
                }
                RegisterInput::UnreadWrite { if_generation } => unread(*if_generation),
                _ => IndeterminateHint::Keep,
            })
            .collect()
    }
}

/// A set of strings (component registrations, dead-letter entries), read whole.
///
/// Reads of the whole set make per-key partitioning impossible: check set histories with
/// [`check`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Set;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SetInput {
    Add(String),
    Remove(String),
    Read,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SetOutput {
    Added,
    Removed,
    Read(BTreeSet<String>),
}

impl Model for Set {
    type State = BTreeSet<String>;
    type Input = SetInput;
    type Output = SetOutput;

    fn init(&self) -> BTreeSet<String> {
        BTreeSet::new()
    }

    fn step(
        &self,
        state: &BTreeSet<String>,
        input: &SetInput,
        output: &SetOutput,
    ) -> Option<BTreeSet<String>> {
        match (input, output) {
            (SetInput::Read, SetOutput::Read(seen)) => (seen == state).then(|| state.clone()),
            (SetInput::Add(_), SetOutput::Added) | (SetInput::Remove(_), SetOutput::Removed) => {
                self.step_unknown(state, input).pop()
            }
            _ => None,
        }
    }

    fn step_unknown(&self, state: &BTreeSet<String>, input: &SetInput) -> Vec<BTreeSet<String>> {
        let mut next = state.clone();
        match input {
            SetInput::Add(x) => {
                next.insert(x.clone());
            }
            SetInput::Remove(x) => {
                next.remove(x);
            }
            SetInput::Read => {}
        }
        vec![next]
    }

    /// Reads are dropped, and so are adds and removes of an element no other operation
    /// mentions: no read can show it, and adds and removes answer the same whatever the
    /// state, so leaving them out changes nothing.
    fn indeterminate_hints(
        &self,
        history: &[Operation<SetInput, SetOutput>],
    ) -> Vec<IndeterminateHint<SetInput>> {
        let mut mentions: HashMap<&str, usize> = HashMap::new();
        for op in history {
            match &op.input {
                SetInput::Add(x) | SetInput::Remove(x) => {
                    *mentions.entry(x.as_str()).or_default() += 1;
                }
                SetInput::Read => {}
            }
            if let Outcome::Ok {
                output: SetOutput::Read(seen),
                ..
            } = &op.ret
            {
                for x in seen {
                    *mentions.entry(x.as_str()).or_default() += 1;
                }
            }
        }
        history
            .iter()
            .map(|op| match &op.input {
                SetInput::Read => IndeterminateHint::Drop,
                SetInput::Add(x) | SetInput::Remove(x)
                    if mentions.get(x.as_str()).copied().unwrap_or(0) <= 1 =>
                {
                    IndeterminateHint::Drop
                }
                _ => IndeterminateHint::Keep,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: u64 = 1_000_000;

    fn ok<I, O>(client: u64, input: I, call: Nanos, at: Nanos, output: O) -> Operation<I, O> {
        Operation {
            client,
            input,
            call,
            ret: Outcome::Ok { output, at },
        }
    }

    fn lost<I, O>(client: u64, input: I, call: Nanos) -> Operation<I, O> {
        Operation {
            client,
            input,
            call,
            ret: Outcome::Indeterminate,
        }
    }

    type RegOp = Operation<RegisterInput, RegisterOutput>;

    fn write(client: u64, v: &str, call: Nanos, at: Nanos, generation: u64) -> RegOp {
        ok(
            client,
            RegisterInput::Write(v.into()),
            call,
            at,
            RegisterOutput::Written { generation },
        )
    }

    fn read(client: u64, call: Nanos, at: Nanos, seen: Option<(&str, u64)>) -> RegOp {
        ok(
            client,
            RegisterInput::Read,
            call,
            at,
            RegisterOutput::Read(seen.map(|(v, g)| (v.to_owned(), g))),
        )
    }

    fn explanation(v: Verdict) -> String {
        match v {
            Verdict::NotLinearizable { explanation } => explanation,
            other => panic!("expected NotLinearizable, got {other:?}"),
        }
    }

    #[test]
    fn sequential_register_history_is_linearizable() {
        let h = vec![
            read(1, 0, 1, None),
            write(1, "a", 2, 3, 1),
            read(2, 4, 5, Some(("a", 1))),
            write(2, "a", 6, 7, 1),
            write(1, "b", 8, 9, 2),
            ok(
                1,
                RegisterInput::Delete,
                10,
                11,
                RegisterOutput::Deleted { existed: true },
            ),
            ok(
                2,
                RegisterInput::Delete,
                12,
                13,
                RegisterOutput::Deleted { existed: false },
            ),
            read(2, 14, 15, None),
            write(1, "c", 16, 17, 1),
            read(2, 18, 19, Some(("c", 1))),
        ];
        assert_eq!(check(&Register, &h, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn concurrent_read_may_see_either_value_of_a_concurrent_write() {
        for seen in [Some(("a", 1)), Some(("b", 2))] {
            let h = vec![
                write(1, "a", 0, 10, 1),
                write(1, "b", 20, 40, 2),
                read(2, 25, 35, seen),
            ];
            assert_eq!(
                check(&Register, &h, BUDGET),
                Verdict::Linearizable,
                "{seen:?}"
            );
        }
    }

    #[test]
    fn operations_touching_the_same_instant_are_concurrent() {
        // The read is called when the write returns: it may still go first.
        let h = vec![write(1, "a", 0, 10, 1), read(2, 10, 20, None)];
        assert_eq!(check(&Register, &h, BUDGET), Verdict::Linearizable);
        let h = vec![write(1, "a", 0, 10, 1), read(2, 11, 20, None)];
        assert!(!check(&Register, &h, BUDGET).is_linearizable());
    }

    #[test]
    fn stale_read_after_a_completed_write_is_not_linearizable_and_named() {
        let h = vec![
            write(1, "a", 0, 10, 1),
            write(1, "b", 20, 30, 2),
            read(2, 40, 50, Some(("a", 1))),
        ];
        let e = explanation(check(&Register, &h, BUDGET));
        assert!(e.contains("op #2 (client 2)"), "{e}");
        assert!(e.contains("places 2 of the 3"), "{e}");
    }

    #[test]
    fn lost_acknowledged_write_is_not_linearizable() {
        let h = vec![
            write(1, "a", 0, 10, 1),
            write(2, "b", 20, 30, 2),
            read(3, 40, 50, Some(("a", 1))),
            read(1, 60, 70, Some(("a", 1))),
        ];
        assert!(matches!(
            check(&Register, &h, BUDGET),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn indeterminate_write_may_be_seen_or_not_but_unwritten_values_may_not() {
        let base = || {
            vec![
                write(1, "a", 0, 10, 1),
                lost(2, RegisterInput::Write("b".into()), 20),
            ]
        };
        for seen in [Some(("a", 1)), Some(("b", 2))] {
            let mut h = base();
            h.push(read(3, 40, 50, seen));
            h.push(read(3, 60, 70, seen));
            assert_eq!(
                check(&Register, &h, BUDGET),
                Verdict::Linearizable,
                "{seen:?}"
            );
        }
        // Taking effect long after its call (a delayed apply) is allowed too.
        let mut h = base();
        h.push(read(3, 40, 50, Some(("a", 1))));
        h.push(read(3, 60, 70, Some(("b", 2))));
        assert_eq!(check(&Register, &h, BUDGET), Verdict::Linearizable);
        // But never before its call.
        let mut h = base();
        h.insert(0, read(3, 12, 15, Some(("b", 2))));
        assert!(!check(&Register, &h, BUDGET).is_linearizable());
        for seen in [Some(("c", 2)), Some(("b", 3))] {
            let mut h = base();
            h.push(read(3, 40, 50, seen));
            assert!(!check(&Register, &h, BUDGET).is_linearizable(), "{seen:?}");
        }
    }

    #[test]
    fn indeterminate_write_cannot_unhappen() {
        let h = vec![
            write(1, "a", 0, 10, 1),
            lost(2, RegisterInput::Write("b".into()), 20),
            read(3, 40, 50, Some(("b", 2))),
            read(3, 60, 70, Some(("a", 1))),
        ];
        let e = explanation(check(&Register, &h, BUDGET));
        assert!(e.contains("op #3"), "{e}");
    }

    #[test]
    fn indeterminate_reads_constrain_nothing() {
        let h = vec![
            write(1, "a", 0, 10, 1),
            lost(2, RegisterInput::Read, 5),
            lost(3, RegisterInput::Read, 50),
            read(1, 20, 30, Some(("a", 1))),
        ];
        assert_eq!(check(&Register, &h, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn unread_indeterminate_writes_fill_generation_gaps_only_after_their_call() {
        // One of two unread lost writes must have happened before the acked write (which
        // reports generation 2); only the one called before it can.
        for (first, second) in [(0, 100), (100, 0)] {
            let h = vec![
                lost(1, RegisterInput::Write("x".into()), first),
                lost(2, RegisterInput::Write("y".into()), second),
                write(3, "z", 50, 60, 2),
                read(3, 70, 80, Some(("z", 2))),
            ];
            assert_eq!(check(&Register, &h, BUDGET), Verdict::Linearizable);
        }
        // Both called after the acked write returned: neither can fill the gap.
        let h = vec![
            lost(1, RegisterInput::Write("x".into()), 100),
            lost(2, RegisterInput::Write("y".into()), 100),
            write(3, "z", 50, 60, 2),
        ];
        assert!(!check(&Register, &h, BUDGET).is_linearizable());
        // Three lost writes can account for a jump of 2, and the last one may be read.
        let h = vec![
            lost(1, RegisterInput::Write("x".into()), 0),
            lost(2, RegisterInput::Write("y".into()), 1),
            lost(3, RegisterInput::Write("w".into()), 2),
            write(4, "z", 50, 60, 3),
            read(4, 70, 80, Some(("z", 3))),
            read(4, 90, 95, Some(("w", 4))),
        ];
        assert_eq!(check(&Register, &h, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn lost_writes_and_deletes_take_effect_in_whatever_order_fits() {
        let with = |tail: Vec<RegOp>| {
            let mut h = vec![
                write(1, "a", 0, 10, 1),
                lost(2, RegisterInput::Write("x".into()), 20),
                lost(3, RegisterInput::Delete, 21),
            ];
            h.extend(tail);
            check(&Register, &h, BUDGET)
        };
        // The delete happened (b starts again at 1), or the write (a, x, b), or neither.
        for generation in [1, 2, 3] {
            let v = with(vec![write(1, "b", 50, 60, generation)]);
            assert_eq!(v, Verdict::Linearizable, "generation {generation}");
        }
        // The delete after b, which a later read and write show.
        let v = with(vec![
            write(1, "b", 50, 60, 2),
            read(1, 70, 80, None),
            write(1, "c", 90, 100, 1),
        ]);
        assert_eq!(v, Verdict::Linearizable);
        // But each happens at most once: generation 5 needs more lost writes than there are,
        // and b then absent again a second delete.
        let v = with(vec![write(1, "b", 50, 60, 5)]);
        assert!(!v.is_linearizable());
        let v = with(vec![write(1, "b", 50, 60, 1), read(1, 70, 80, None)]);
        assert!(!v.is_linearizable());
    }

    #[test]
    fn two_writes_acked_with_the_same_generation_are_not_linearizable() {
        let h = vec![write(1, "a", 0, 10, 1), write(2, "b", 5, 15, 1)];
        assert!(!check(&Register, &h, BUDGET).is_linearizable());
        // The same value twice keeps its generation.
        let h = vec![write(1, "a", 0, 10, 1), write(2, "a", 5, 15, 1)];
        assert_eq!(check(&Register, &h, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn write_if_generation_must_match_the_generation() {
        let cas = |v: &str, generation: u64, call, at, out| {
            ok(
                2,
                RegisterInput::WriteIfGeneration {
                    value: v.into(),
                    generation,
                },
                call,
                at,
                out,
            )
        };
        // Expected absent (0), but the key exists: acking it is wrong.
        let h = vec![
            write(1, "a", 0, 10, 1),
            cas("b", 0, 20, 30, RegisterOutput::CasOk { generation: 2 }),
        ];
        assert!(!check(&Register, &h, BUDGET).is_linearizable());
        let h = vec![
            write(1, "a", 0, 10, 1),
            cas("b", 0, 20, 30, RegisterOutput::CasFailed),
            cas("b", 1, 40, 50, RegisterOutput::CasOk { generation: 2 }),
            read(1, 60, 70, Some(("b", 2))),
        ];
        assert_eq!(check(&Register, &h, BUDGET), Verdict::Linearizable);
        // Refusing a matching generation is wrong too.
        let h = vec![
            write(1, "a", 0, 10, 1),
            cas("b", 1, 20, 30, RegisterOutput::CasFailed),
        ];
        assert!(!check(&Register, &h, BUDGET).is_linearizable());
    }

    #[test]
    fn definite_failures_change_nothing() {
        let h = vec![
            write(1, "a", 0, 10, 1),
            ok(
                2,
                RegisterInput::Write("b".into()),
                20,
                30,
                RegisterOutput::Failed,
            ),
            read(1, 40, 50, Some(("a", 1))),
        ];
        assert_eq!(check(&Register, &h, BUDGET), Verdict::Linearizable);
        let h = vec![
            write(1, "a", 0, 10, 1),
            ok(
                2,
                RegisterInput::Write("b".into()),
                20,
                30,
                RegisterOutput::Failed,
            ),
            read(1, 40, 50, Some(("b", 2))),
        ];
        assert!(!check(&Register, &h, BUDGET).is_linearizable());
    }

    type SetOp = Operation<SetInput, SetOutput>;

    fn set_read(client: u64, call: Nanos, at: Nanos, xs: &[&str]) -> SetOp {
        ok(
            client,
            SetInput::Read,
            call,
            at,
            SetOutput::Read(xs.iter().map(|x| (*x).to_owned()).collect()),
        )
    }

    fn add(client: u64, x: &str, call: Nanos, at: Nanos) -> SetOp {
        ok(client, SetInput::Add(x.into()), call, at, SetOutput::Added)
    }

    #[test]
    fn set_acked_add_missing_from_a_later_read_is_not_linearizable() {
        let h = vec![
            add(1, "a", 0, 10),
            add(2, "b", 5, 15),
            set_read(3, 20, 30, &["a"]),
        ];
        assert!(!check(&Set, &h, BUDGET).is_linearizable());
    }

    #[test]
    fn set_element_never_added_or_already_removed_seen_is_not_linearizable() {
        let h = vec![add(1, "a", 0, 10), set_read(3, 20, 30, &["a", "z"])];
        assert!(!check(&Set, &h, BUDGET).is_linearizable());
        let h = vec![
            add(1, "a", 0, 10),
            ok(1, SetInput::Remove("a".into()), 20, 30, SetOutput::Removed),
            set_read(3, 40, 50, &["a"]),
        ];
        assert!(!check(&Set, &h, BUDGET).is_linearizable());
        // An element only added by a lost add still cannot appear before the add's call.
        let h = vec![
            set_read(3, 0, 10, &["a"]),
            lost(1, SetInput::Add("a".into()), 20),
        ];
        assert!(!check(&Set, &h, BUDGET).is_linearizable());
    }

    #[test]
    fn set_concurrent_or_indeterminate_add_may_be_visible_or_not() {
        for seen in [&["a"][..], &["a", "b"][..]] {
            let h = vec![
                add(1, "a", 0, 10),
                add(2, "b", 20, 40),
                set_read(3, 25, 35, seen),
            ];
            assert_eq!(check(&Set, &h, BUDGET), Verdict::Linearizable, "{seen:?}");
            let h = vec![
                add(1, "a", 0, 10),
                lost(2, SetInput::Add("b".into()), 20),
                lost(2, SetInput::Add("c".into()), 20),
                set_read(3, 45, 55, seen),
            ];
            assert_eq!(check(&Set, &h, BUDGET), Verdict::Linearizable, "{seen:?}");
        }
    }

    #[test]
    fn return_before_call_is_rejected_as_invalid() {
        let h = vec![write(1, "a", 10, 5, 1)];
        assert!(matches!(
            check(&Register, &h, BUDGET),
            Verdict::Invalid { .. }
        ));
        let keyed = vec![("k", write(1, "a", 10, 5, 1))];
        let e = check_keyed(&Register, &keyed, BUDGET)
            .err()
            .unwrap_or_default();
        assert!(e.contains("\"k\"") && e.contains("malformed"), "{e}");
    }

    #[test]
    fn search_beyond_its_budget_is_unknown() {
        let h = vec![
            write(1, "a", 0, 10, 1),
            write(2, "b", 0, 10, 2),
            read(3, 20, 30, Some(("b", 2))),
        ];
        assert_eq!(check(&Register, &h, 2), Verdict::Unknown { explored: 2 });
        assert_eq!(check(&Register, &h, BUDGET), Verdict::Linearizable);
        let keyed = vec![("k", h[0].clone()), ("k", h[1].clone())];
        let e = check_keyed(&Register, &keyed, 1).err().unwrap_or_default();
        assert!(e.contains("\"k\"") && e.contains("budget"), "{e}");
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(check(&Register, &[], 0), Verdict::Linearizable);
    }

    #[test]
    fn check_keyed_reports_the_bad_key() {
        let h = vec![
            ("a", write(1, "x", 0, 10, 1)),
            ("b", write(1, "y", 0, 10, 1)),
            ("a", read(2, 20, 30, Some(("x", 1)))),
            // Fine on its own key, stale for "b" only if keys were mixed up.
            ("b", write(2, "z", 20, 30, 2)),
            ("c", read(3, 0, 5, None)),
        ];
        assert_eq!(check_keyed(&Register, &h, BUDGET), Ok(()));
        let mut bad = h.clone();
        bad.push(("b", read(3, 40, 50, Some(("y", 1)))));
        let e = check_keyed(&Register, &bad, BUDGET)
            .err()
            .unwrap_or_default();
        assert!(e.starts_with("key \"b\""), "{e}");
        // Operations are named by their index in the whole keyed history.
        assert!(e.contains("op #5"), "{e}");
    }

    /// A deterministic pseudo-random generator (SplitMix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(1);
            splitmix64(self.0)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A history of `n` operations by `clients` concurrent clients on a correct register:
    /// 50% reads, 42% writes, 4% deletes, 4% conditional writes (a third of them expecting
    /// the wrong generation), about 5% of all of them indeterminate (half of which took
    /// effect). Each operation takes effect at an instant between its call and its return, in
    /// the order of those instants; every written value is unique.
    fn generated_history(n: usize, clients: u64, seed: u64) -> Vec<RegOp> {
        struct Planned {
            client: u64,
            kind: u64,
            call: Nanos,
            at: Nanos,
            ret: Nanos,
            lost: bool,
            took_effect: bool,
        }
        let mut rng = Rng(seed);
        let mut clock = vec![0u64; clients as usize];
        let mut planned = Vec::with_capacity(n);
        for _ in 0..n {
            // The client that is free first issues the next operation.
            let (c, &t) = clock
                .iter()
                .enumerate()
                .min_by_key(|&(_, t)| *t)
                .unwrap_or((0, &0));
            let call = t + rng.below(50);
            let at = call + 1 + rng.below(200);
            let ret = at + 1 + rng.below(200);
            let lost = rng.below(100) < 5;
            let took_effect = rng.below(2) == 0;
            // A lost operation's client gives up after a timeout.
            clock[c] = if lost { call + 500 } else { ret };
            planned.push(Planned {
                client: c as u64,
                kind: rng.below(100),
                call,
                at,
                ret,
                lost,
                took_effect,
            });
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (planned[i].at, i));
        let mut state: RegisterState = None;
        let mut ops: Vec<Option<RegOp>> = vec![None; n];
        for i in order {
            let p = &planned[i];
            let input = match p.kind {
                0..=49 => RegisterInput::Read,
                50..=91 => RegisterInput::Write(format!("v{i}")),
                92..=95 => RegisterInput::Delete,
                _ => {
                    let current = state.as_ref().map_or(0, |(_, g)| *g);
                    let generation = match rng.below(3) {
                        0 => current + 1,
                        _ => current,
                    };
                    RegisterInput::WriteIfGeneration {
                        value: format!("v{i}"),
                        generation,
                    }
                }
            };
            let ret = if p.lost {
                if p.took_effect {
                    state = Register::apply(&state, &input).0;
                }
                Outcome::Indeterminate
            } else {
                let (next, output) = Register::apply(&state, &input);
                state = next;
                // (Never `None`: a correct register only holds values that were written.)
                let output = output.unwrap_or(RegisterOutput::Failed);
                Outcome::Ok { output, at: p.ret }
            };
            ops[i] = Some(Operation {
                client: p.client,
                input,
                call: p.call,
                ret,
            });
        }
        ops.into_iter().flatten().collect()
    }

    #[test]
    fn large_generated_history_passes_and_fails_once_a_read_is_corrupted() {
        let h = generated_history(2_000, 5, 42);
        assert_eq!(h.len(), 2_000);
        let lost = h.iter().filter(|o| o.ret == Outcome::Indeterminate).count();
        assert!((50..=150).contains(&lost), "{lost} indeterminate");
        // A bounded amount of work per operation (fewer than 100,000 steps are needed).
        assert_eq!(check(&Register, &h, 200_000), Verdict::Linearizable);

        // A read after the thousandth operation now sees a value acknowledged among the first
        // 300, overwritten since. Proving that nothing explains it takes an exhaustive search
        // of everything before it (about 800,000 steps).
        let old = h[..300]
            .iter()
            .find_map(|o| match (&o.input, &o.ret) {
                (
                    RegisterInput::Write(v),
                    Outcome::Ok {
                        output: RegisterOutput::Written { generation },
                        ..
                    },
                ) => Some((v.clone(), *generation)),
                _ => None,
            })
            .unwrap_or_default();
        let target = (1_000..h.len())
            .find(|&i| {
                matches!(
                    h[i].ret,
                    Outcome::Ok {
                        output: RegisterOutput::Read(Some(_)),
                        ..
                    }
                )
            })
            .unwrap_or_default();
        let mut bad = h.clone();
        if let Outcome::Ok { output, .. } = &mut bad[target].ret {
            *output = RegisterOutput::Read(Some(old));
        }
        let e = explanation(check(&Register, &bad, 2_000_000));
        assert!(e.contains(&format!("op #{target} ")), "{e}");
    }
}
