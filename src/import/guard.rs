//! Checks a torch file or pickle passes before any parser sees it, so that a hostile file costs
//! at most a small multiple of its own size in memory and no deep recursion.
//!
//! - [`check_pickle`] runs the pickle's opcodes on a stack of sizes instead of objects: every
//!   item carries its nesting depth and the number of nodes it would hold once built (a memo
//!   `GET` copies its object, as candle's and serde-pickle's machines do). Too deep a nesting
//!   (Rust drops nested objects recursively), too many nodes (a "billion laughs" of memo copies),
//!   too many memo entries or a malformed opcode stream is refused with one line.
//! - [`check_torch_zip`] bounds every entry's declared size against the file's (a zip bomb),
//!   checks the pickle in it, and checks each tensor's byte range against its storage entry
//!   (candle allocates a tensor's whole shape before reading it).
//!
//! Written here because no well-kept crate offers a bounded pre-pass: candle's and serde-pickle's
//! machines build the objects as they go, and pickletools is Python's.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

/// The deepest nesting a pickle may build (nanoGPT's and transformers' nest a handful deep).
pub const MAX_DEPTH: u32 = 256;
/// The most memo entries.
pub const MAX_MEMO: usize = 1 << 20;
/// The most objects a pickle may build, memo copies included, per byte of pickle (plus a floor).
const NODES_PER_BYTE: u64 = 16;
const MIN_NODES: u64 = 1 << 20;
/// The largest pickle read.
pub const MAX_PICKLE_BYTES: u64 = 256 << 20;

#[derive(Clone, Copy)]
enum Slot {
    Mark,
    Item { depth: u32, nodes: u64 },
}

/// Refuse a pickle whose objects would nest deeper than [`MAX_DEPTH`], number more than 16 per
/// byte of pickle, or need more than [`MAX_MEMO`] memo entries, or whose opcodes do not parse;
/// `what` names it in the error.
pub fn check_pickle(data: &[u8], what: &str) -> Result<()> {
    let max_nodes = MIN_NODES.max(NODES_PER_BYTE.saturating_mul(data.len() as u64));
    let bad = |why: String| anyhow!("{what} is not a pickle this reader accepts: {why}");
    let mut stack: Vec<Slot> = Vec::new();
    let mut memo: HashMap<u64, (u32, u64)> = HashMap::new();
    let mut at = 0usize;
    let leaf = Slot::Item { depth: 0, nodes: 1 };
    // Small readers over `data` from `at`.
    macro_rules! take {
        ($n:expr) => {{
            let n: usize = $n;
            let end = at.checked_add(n).filter(|&e| e <= data.len()).ok_or_else(|| bad(format!("it ends inside an argument at byte {at}")))?;
            let s = &data[at..end];
            at = end;
            s
        }};
    }
    macro_rules! uint {
        ($n:expr) => {{
            let b = take!($n);
            let mut v = 0u64;
            for (i, x) in b.iter().enumerate() {
                v |= (*x as u64) << (8 * i);
            }
            v
        }};
    }
    macro_rules! nl_arg {
        () => {{
            let rest = &data[at..];
            let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| bad(format!("an argument at byte {at} has no end of line")))?;
            let s = &rest[..n];
            at += n + 1;
            s
        }};
    }
    let pop = |stack: &mut Vec<Slot>| -> Result<(u32, u64)> {
        match stack.pop() {
            Some(Slot::Item { depth, nodes }) => Ok((depth, nodes)),
            Some(Slot::Mark) => Err(bad("an opcode takes a mark for an object".into())),
            None => Err(bad("an opcode pops an empty stack".into())),
        }
    };
    // Pop down to the last mark: the depth and nodes of what was above it.
    let pop_mark = |stack: &mut Vec<Slot>| -> Result<(u32, u64)> {
        let (mut depth, mut nodes) = (0u32, 0u64);
        loop {
            match stack.pop() {
                Some(Slot::Mark) => return Ok((depth, nodes)),
                Some(Slot::Item { depth: d, nodes: n }) => {
                    depth = depth.max(d);
                    nodes = nodes.saturating_add(n);
                }
                None => return Err(bad("a mark is missing".into())),
            }
        }
    };
    let check = |depth: u32, nodes: u64| -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(bad(format!("its objects nest more than {MAX_DEPTH} deep")));
        }
        if nodes > max_nodes {
            return Err(bad(format!("it builds more than {max_nodes} objects (memo copies counted) from {} bytes", data.len())));
        }
        Ok(())
    };
    // A container built from children of `depth` and `nodes`.
    let push = |stack: &mut Vec<Slot>, depth: u32, nodes: u64| -> Result<()> {
        let (depth, nodes) = (depth + 1, nodes.saturating_add(1));
        check(depth, nodes)?;
        stack.push(Slot::Item { depth, nodes });
        Ok(())
    };
    // Add children of `depth` and `nodes` to the container on top of the stack.
    let extend = |stack: &mut Vec<Slot>, depth: u32, nodes: u64| -> Result<()> {
        match stack.last_mut() {
            Some(Slot::Item { depth: d, nodes: n }) => {
                *d = (*d).max(depth + 1);
                *n = n.saturating_add(nodes);
                check(*d, *n)
            }
            _ => Err(bad("an opcode adds to something that is not an object".into())),
        }
    };
    loop {
        let Some(&op) = data.get(at) else { bail!(bad("it has no STOP opcode".into())) };
        at += 1;
        match op {
            b'.' => {
                return match stack.as_slice() {
                    [Slot::Item { .. }] => Ok(()),
                    _ => Err(bad(format!("it stops with {} items on its stack", stack.len()))),
                }
            }
            b'(' => stack.push(Slot::Mark),
            b'0' => {
                stack.pop().ok_or_else(|| bad("POP on an empty stack".into()))?;
            }
            b'1' => {
                pop_mark(&mut stack)?;
            }
            b'2' => {
                let top = *stack.last().ok_or_else(|| bad("DUP on an empty stack".into()))?;
                stack.push(top);
            }
            // Scalars, strings and bytes: a leaf each.
            b'F' | b'I' | b'L' | b'S' | b'V' | b'P' => {
                nl_arg!();
                stack.push(leaf);
            }
            b'c' => {
                nl_arg!();
                nl_arg!();
                stack.push(leaf);
            }
            b'J' => {
                take!(4);
                stack.push(leaf);
            }
            b'K' | b'\x82' => {
                take!(1);
                stack.push(leaf);
            }
            b'M' | b'\x83' => {
                take!(2);
                stack.push(leaf);
            }
            b'\x84' => {
                take!(4);
                stack.push(leaf);
            }
            b'G' => {
                take!(8);
                stack.push(leaf);
            }
            b'N' | b'\x88' | b'\x89' | b'\x97' => stack.push(leaf),
            b'U' | b'C' | b'\x8c' | b'\x8a' => {
                let n = uint!(1) as usize;
                take!(n);
                stack.push(leaf);
            }
            b'T' | b'X' | b'B' | b'\x8b' => {
                let n = uint!(4);
                take!(usize::try_from(n).map_err(|_| bad("a length past memory".into()))?);
                stack.push(leaf);
            }
            b'\x8d' | b'\x8e' | b'\x96' => {
                let n = uint!(8);
                take!(usize::try_from(n).map_err(|_| bad("a length past memory".into()))?);
                stack.push(leaf);
            }
            // Empty containers.
            b']' | b'}' | b')' | b'\x8f' => stack.push(leaf),
            // Containers from everything above the mark.
            b'l' | b'd' | b't' | b'\x91' | b'o' => {
                let (d, n) = pop_mark(&mut stack)?;
                push(&mut stack, d, n)?;
            }
            b'i' => {
                nl_arg!();
                nl_arg!();
                let (d, n) = pop_mark(&mut stack)?;
                push(&mut stack, d, n)?;
            }
            b'\x85' | b'Q' | b'\x98' => {
                let (d, n) = pop(&mut stack)?;
                push(&mut stack, d, n)?;
            }
            b'\x86' | b'R' | b'\x81' | b'\x93' => {
                let (d1, n1) = pop(&mut stack)?;
                let (d2, n2) = pop(&mut stack)?;
                push(&mut stack, d1.max(d2), n1.saturating_add(n2))?;
            }
            b'\x87' | b'\x92' => {
                let mut d = 0;
                let mut n = 0u64;
                for _ in 0..3 {
                    let (di, ni) = pop(&mut stack)?;
                    d = d.max(di);
                    n = n.saturating_add(ni);
                }
                push(&mut stack, d, n)?;
            }
            // Additions to the container below.
            b'a' | b'b' => {
                let (d, n) = pop(&mut stack)?;
                extend(&mut stack, d, n)?;
            }
            b's' => {
                let (d1, n1) = pop(&mut stack)?;
                let (d2, n2) = pop(&mut stack)?;
                extend(&mut stack, d1.max(d2), n1.saturating_add(n2))?;
            }
            b'e' | b'u' | b'\x90' => {
                let (d, n) = pop_mark(&mut stack)?;
                extend(&mut stack, d, n)?;
            }
            // The memo.
            b'p' | b'q' | b'r' | b'\x94' => {
                let key = match op {
                    b'p' => std::str::from_utf8(nl_arg!()).ok().and_then(|s| s.trim().parse().ok()).ok_or_else(|| bad("PUT without a number".into()))?,
                    b'q' => uint!(1),
                    b'r' => uint!(4),
                    _ => memo.len() as u64,
                };
                let Some(Slot::Item { depth, nodes }) = stack.last().copied() else { bail!(bad("PUT of a mark or of nothing".into())) };
                memo.insert(key, (depth, nodes));
                if memo.len() > MAX_MEMO {
                    bail!(bad(format!("its memo holds more than {MAX_MEMO} entries")));
                }
            }
            b'g' | b'h' | b'j' => {
                let key = match op {
                    b'g' => std::str::from_utf8(nl_arg!()).ok().and_then(|s| s.trim().parse().ok()).ok_or_else(|| bad("GET without a number".into()))?,
                    b'h' => uint!(1),
                    _ => uint!(4),
                };
                let &(depth, nodes) = memo.get(&key).ok_or_else(|| bad(format!("GET of memo entry {key}, never PUT")))?;
                stack.push(Slot::Item { depth, nodes });
            }
            b'\x80' => {
                take!(1);
            }
            b'\x95' => {
                take!(8);
            }
            other => bail!(bad(format!("unknown opcode 0x{other:02x} at byte {}", at - 1))),
        }
        if stack.len() > data.len() {
            bail!(bad("its stack outgrows the file".into()));
        }
    }
}

/// Check a torch zip (`torch.save`'s format: nanoGPT's `ckpt.pt`, `pytorch_model.bin`) before
/// candle reads it: every entry's declared size within the file's (a zip bomb is refused) and
/// its pickle through [`check_pickle`]. A file that is no zip, or holds no pickle, passes: the
/// reader that follows says what it is not.
pub fn check_torch_zip(path: &Path) -> Result<()> {
    let Some((file_bytes, mut zip, entries)) = zip_entries(path)? else { return Ok(()) };
    // Stored entries (torch.save's) are their own size; compressed ones may expand, but not past
    // a bound on the whole archive.
    let bound = file_bytes.saturating_mul(2).saturating_add(1 << 20);
    let total = entries.iter().fold(0u64, |t, (_, size)| t.saturating_add(*size));
    if total > bound {
        bail!("{}: its entries declare {total} bytes from a {file_bytes}-byte file (a zip bomb?); refused", path.display());
    }
    let pickle = entries.into_iter().find(|(name, _)| name.ends_with("data.pkl"));
    let Some((pkl, declared)) = pickle else { return Ok(()) };
    if declared > MAX_PICKLE_BYTES {
        bail!("{}: its pickle declares {declared} bytes, more than the {MAX_PICKLE_BYTES} read", path.display());
    }
    let mut data = Vec::new();
    let entry = zip.by_name(&pkl).map_err(|e| anyhow!("{}: {pkl} is unreadable: {e}", path.display()))?;
    entry.take(declared + 1).read_to_end(&mut data).with_context(|| format!("reading {pkl} in {}", path.display()))?;
    if data.len() as u64 > declared {
        bail!("{}: {pkl} runs past its declared {declared} bytes; refused", path.display());
    }
    check_pickle(&data, &format!("{pkl} in {}", path.display()))
}

/// Check that every tensor of the torch zip at `path` (its state dict under `key`, as candle
/// takes it) lies, from its storage offset, inside its storage entry: candle allocates a tensor's
/// whole shape before reading it. Run after [`check_torch_zip`]; a file that is no zip passes, as
/// there.
pub fn check_tensor_ranges(path: &Path, key: Option<&str>) -> Result<()> {
    let Some((_, _, entries)) = zip_entries(path)? else { return Ok(()) };
    let sizes: HashMap<String, u64> = entries.into_iter().collect();
    let infos = candle_core::pickle::read_pth_tensor_info(path, false, key).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    for t in infos {
        let elems = t.layout.shape().elem_count() as u128;
        let end = (t.layout.start_offset() as u128 + elems) * t.dtype.size_in_bytes() as u128;
        let have = sizes.get(&t.path).copied().ok_or_else(|| anyhow!("{}: tensor {} names storage {}, which is not in the archive", path.display(), t.name, t.path))?;
        if end > have as u128 {
            bail!(
                "{}: tensor {} of shape {:?} needs {end} bytes of its storage {}, which holds {have}; refused",
                path.display(),
                t.name,
                t.layout.dims(),
                t.path
            );
        }
    }
    Ok(())
}

/// The file's size, its zip archive and every entry's name and declared size; None where the file
/// is no zip.
#[allow(clippy::type_complexity)]
fn zip_entries(path: &Path) -> Result<Option<(u64, zip::ZipArchive<std::io::BufReader<std::fs::File>>, Vec<(String, u64)>)>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let file_bytes = file.metadata()?.len();
    let Ok(mut zip) = zip::ZipArchive::new(std::io::BufReader::new(file)) else { return Ok(None) };
    let mut entries = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(|e| anyhow!("{}: entry {i} is unreadable: {e}", path.display()))?;
        let name = entry.name().map_err(|e| anyhow!("{}: entry {i} has no readable name: {e}", path.display()))?.to_string();
        entries.push((name, entry.size()));
    }
    Ok(Some((file_bytes, zip, entries)))
}

/// Read a standalone pickle file (nanoGPT's `meta.pkl`) of at most [`MAX_PICKLE_BYTES`], checked
/// by [`check_pickle`].
pub fn read_pickle_file(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut data = Vec::new();
    file.take(MAX_PICKLE_BYTES + 1).read_to_end(&mut data).with_context(|| format!("reading {}", path.display()))?;
    if data.len() as u64 > MAX_PICKLE_BYTES {
        bail!("{} is larger than the {MAX_PICKLE_BYTES} bytes a pickle may be", path.display());
    }
    check_pickle(&data, &path.display().to_string())?;
    Ok(data)
}
