//! The Redis side of reading a state's facility ranking: the top rows of the state's own
//! sorted set, at a cost that follows the rows asked for, not the state's facilities.
use redis::Value;

use super::keys::{self, LbScope};
use super::store::decode;
use super::{Store, StoreError};

/// Lua: `top_rows(key, n, skip)`, the top `n` members of a sorted set with their scores
/// (flat list), highest first, leaving out the member `skip`; members tied at the cut are
/// taken in ascending member order, as the API sorts ties, so the rows are the exact top
/// `n` (`ZRANGE REV` alone cuts ties in descending member order). O(log N + n) plus the
/// members tied at the cut that are asked for.
macro_rules! top_rows {
    () => {
        r"
local function top_rows(key, want, skip)
  local rows = {}
  local top = redis.call('ZRANGE', key, 0, want, 'REV', 'WITHSCORES')
  for i = 1, #top, 2 do
    if top[i] ~= skip and #rows < 2 * want then
      rows[#rows + 1] = top[i]
      rows[#rows + 1] = top[i + 1]
    end
  end
  if #rows < 2 * want then return rows end
  -- Rows strictly above the lowest score kept, then that score's members in order.
  local cut = rows[#rows]
  local out = {}
  for i = 1, #rows, 2 do
    if tonumber(rows[i + 1]) > tonumber(cut) then
      out[#out + 1] = rows[i]
      out[#out + 1] = rows[i + 1]
    end
  end
  local room = want - #out / 2
  local tied = redis.call('ZRANGE', key, cut, cut, 'BYSCORE', 'LIMIT', 0, room + 1, 'WITHSCORES')
  for i = 1, #tied, 2 do
    if tied[i] ~= skip and #out < 2 * want then
      out[#out + 1] = tied[i]
      out[#out + 1] = tied[i + 1]
    end
  end
  return out
end
"
    };
}

/// KEYS: the state ranking (`f:s:<state>` of one kind or `all`), then the kinds' national
/// state rankings (`s`), then the kinds' district rankings (`d`), one of each per kind.
/// ARGV: state code, rows wanted, per kind the key prefix of its district facility rankings
/// (`...:f:d:`), the total member.
///
/// The state ranking is complete when its total member equals the state's tokens on the
/// state rankings (summed over the kinds): the APPLY script raises both in one step. It is
/// not when it predates this ranking (boards applied before it existed) or when a node of an
/// older version applied counts without it; then it is rebuilt here, in the same atomic
/// step, by merging the state's district rankings (what every read used to do), so the
/// answer is exact either way and the rebuild happens once per such gap, not per read.
///
/// Then the top `n` rows (`top_rows`). Returns {state tokens, 1 if rebuilt, flat
/// member/score list}.
const STATE_TOP: &str = concat!(
    top_rows!(),
    r"
local n = (#KEYS - 1) / 2
local st = ARGV[1]
local want = tonumber(ARGV[2])
local total = ARGV[3 + n]
local tokens = 0
local ttl = -1
for i = 2, 1 + n do
  tokens = tokens + tonumber(redis.call('ZSCORE', KEYS[i], st) or '0')
  local t = redis.call('PTTL', KEYS[i])
  if t > ttl then ttl = t end
end
local rebuilt = 0
if tonumber(redis.call('ZSCORE', KEYS[1], total) or '0') ~= tokens then
  local src = {}
  local prefix = st .. '/'
  for i = 2 + n, 1 + 2 * n do
    local kp = ARGV[3 + i - 2 - n]
    for _, d in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
      if string.sub(d, 1, #prefix) == prefix then src[#src + 1] = kp .. d end
    end
  end
  redis.call('DEL', KEYS[1])
  if #src > 0 then redis.call('ZUNIONSTORE', KEYS[1], #src, unpack(src)) end
  redis.call('ZADD', KEYS[1], tokens, total)
  -- A daily ranking lives as long as the state rankings it was checked against.
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
  rebuilt = 1
end
return {tokens, rebuilt, top_rows(KEYS[1], want, total)}
"
);

/// KEYS: a ranking. ARGV: rows wanted. The exact top rows of one stored ranking (the
/// national facility rankings), ties at the cut in member order.
const TOP: &str = concat!(top_rows!(), "return top_rows(KEYS[1], tonumber(ARGV[1]), '')\n");

/// A state's top facilities as [`Store::state_top`] read them.
#[derive(Debug, Clone, PartialEq)]
pub struct StateTop {
    /// The state's tokens over the kinds asked for (what shares are taken of).
    pub total: u64,
    /// (facility, tokens), highest first, ties in id order.
    pub rows: Vec<(String, u64)>,
    /// The state ranking was incomplete and rebuilt from the district rankings by this read.
    pub rebuilt: bool,
}

/// A flat member/score list as (member, tokens).
fn pairs(flat: Vec<String>) -> Vec<(String, u64)> {
    flat.chunks_exact(2).map(|p| (p[0].clone(), p[1].parse::<f64>().map_or(0, |s| s.max(0.0).round() as u64))).collect()
}

impl Store {
    /// The top `n` facilities of `state` in `period` over `kinds` (one kind, or all four for
    /// the all-kinds ranking named `all`).
    pub async fn state_top(&self, period: &str, kinds: &[&str], state: &str, n: usize) -> Result<StateTop, StoreError> {
        let ranking_kind = if kinds.len() == 1 { kinds[0] } else { "all" };
        let mut ks = vec![keys::leaderboard(period, ranking_kind, LbScope::FacilitiesInState(state))];
        ks.extend(kinds.iter().map(|k| keys::leaderboard(period, k, LbScope::States)));
        ks.extend(kinds.iter().map(|k| keys::leaderboard(period, k, LbScope::Districts)));
        let mut args = vec![state.to_string(), n.max(1).to_string()];
        // The prefix of a district's facility ranking: the key with an empty district id.
        args.extend(kinds.iter().map(|k| keys::leaderboard(period, k, LbScope::FacilitiesInDistrict(""))));
        args.push(keys::LB_STATE_TOTAL.to_string());
        let reply: Value = self.eval_batch(STATE_TOP, &[(ks, args)]).await?.pop().ok_or(StoreError::Unavailable)?;
        let (total, rebuilt, flat): (i64, i64, Vec<String>) = decode(reply)?;
        Ok(StateTop { total: total.max(0) as u64, rows: pairs(flat), rebuilt: rebuilt == 1 })
    }

    /// The exact top `n` members of one ranking with their counts, highest first, ties in
    /// member order.
    pub async fn top_exact(&self, key: &str, n: usize) -> Result<Vec<(String, u64)>, StoreError> {
        let calls = [(vec![key.to_string()], vec![n.max(1).to_string()])];
        let reply: Value = self.eval_batch(TOP, &calls).await?.pop().ok_or(StoreError::Unavailable)?;
        Ok(pairs(decode(reply)?))
    }
}
