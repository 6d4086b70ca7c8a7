//! One error type for the whole core. Every variant names the offending value so the
//! bindings can turn it into a Python exception whose message says what was wrong.

use std::fmt;

/// Errors returned by the core. None of them leave state half-changed: every
/// operation validates its whole input before it mutates anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A block id outside `1..num_blocks` of the named pool (0 is the null block).
    InvalidBlockId { id: i64, num_blocks: usize },
    /// The null block (id 0) was passed where a real block is needed.
    NullBlock,
    /// `free` of a block whose reference count is already zero.
    DoubleFree { id: i32 },
    /// More blocks were asked for than the pool has free.
    OutOfBlocks { requested: usize, free: usize },
    /// A negative count or size.
    NegativeCount { what: &'static str, value: i64 },
    /// Two parallel inputs of different lengths.
    LengthMismatch {
        what: &'static str,
        left: usize,
        right: usize,
    },
    /// `cache_blocks` on a block that is not in use.
    NotInUse { id: i32 },
    /// `cache_blocks` on a block that already carries a different hash.
    AlreadyCached { id: i32 },
    /// An operation that needs the pool idle found blocks in use.
    PoolInUse { in_use: usize },
    /// A group index outside `0..num_groups`.
    UnknownGroup { group: i64, num_groups: usize },
    /// A malformed argument that none of the above describe.
    InvalidArgument(String),
    /// A request id that the manager does not know.
    UnknownRequest { req_id: String },
    /// A request id that the manager already holds (`in_call: false`), or one given
    /// twice within a single call (`in_call: true`).
    DuplicateRequest { req_id: String, in_call: bool },
    /// A token id outside `0..vocab` (or negative).
    InvalidToken { token: i64, position: usize },
    /// A request in the wrong phase for the operation (e.g. a prefix lookup while running).
    RequestState { req_id: i64, msg: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidBlockId { id, num_blocks } => write!(
                f,
                "block id {id} is out of range for a pool of {num_blocks} blocks (valid ids are 1..{})",
                num_blocks.saturating_sub(1)
            ),
            Error::NullBlock => write!(f, "block id 0 is the null block and cannot be used here"),
            Error::DoubleFree { id } => {
                write!(f, "block {id} is already free (reference count 0): double free")
            }
            Error::OutOfBlocks { requested, free } => {
                write!(f, "cannot allocate {requested} blocks: only {free} are free")
            }
            Error::NegativeCount { what, value } => {
                write!(f, "{what} must be non-negative, got {value}")
            }
            Error::LengthMismatch { what, left, right } => {
                write!(f, "{what}: lengths differ ({left} vs {right})")
            }
            Error::NotInUse { id } => {
                write!(f, "block {id} is not in use (reference count 0) and cannot be cached")
            }
            Error::AlreadyCached { id } => {
                write!(f, "block {id} already carries a different block hash")
            }
            Error::PoolInUse { in_use } => write!(
                f,
                "cannot reset the prefix cache while {in_use} blocks are in use"
            ),
            Error::UnknownGroup { group, num_groups } => write!(
                f,
                "group {group} does not exist (there are {num_groups} groups: 0..{})",
                num_groups.saturating_sub(1)
            ),
            Error::InvalidArgument(msg) => write!(f, "{msg}"),
            Error::UnknownRequest { req_id } => write!(f, "unknown request id {req_id:?}"),
            Error::DuplicateRequest {
                req_id,
                in_call: false,
            } => write!(f, "request id {req_id:?} is already present"),
            Error::DuplicateRequest {
                req_id,
                in_call: true,
            } => write!(f, "request id {req_id:?} appears more than once in the call"),
            Error::InvalidToken { token, position } => {
                write!(f, "token id {token} at position {position} is out of range")
            }
            Error::RequestState { req_id, msg } => write!(f, "request {req_id}: {msg}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
