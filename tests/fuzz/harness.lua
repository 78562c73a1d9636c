-- harness.lua: the policy of the fuzz harnesses that run decisions
-- (tests/fuzz/fuzz_request.c, fuzz_customers.c, fuzz_stored.c, and the
-- offers of fuzzed catalogs in fuzz_catalog.c). It reads what comes from
-- outside (session fields, attributes, consents, propensities, RFM,
-- exposures, the offer's own fields) so that those values reach Lua, and
-- scores with the engine's expected margin so that the C paths run too.

local policy = { name = "fuzz_harness", params = {} }

local function text_weight(s)
  if type(s) ~= "string" then
    return 0
  end
  -- length and a pattern over outside text: the bounded matcher sees it
  local digits = 0
  for _ in s:gmatch("%d") do
    digits = digits + 1
  end
  return nbx.len(s) + digits + (s:find("vip", 1, true) and 1 or 0)
end

function policy.eligible(offer, customer, session)
  if session.channel == "blocked" then
    return false
  end
  local purpose = offer.purpose
  if purpose ~= nil and purpose ~= "none" and customer.consent[purpose] == false then
    return false
  end
  return true
end

function policy.score(offer, customer, session)
  local m = nbx.expected_margin(customer, offer)
  local bonus = 0
  for k, v in pairs(session) do
    bonus = bonus + text_weight(k) + text_weight(v)
  end
  for k, v in pairs(customer.attrs) do
    bonus = bonus + text_weight(k)
    if type(v) == "number" and v == v and v > -1e300 and v < 1e300 then
      bonus = bonus + nbx.clamp(v, -10, 10)
    end
  end
  local rfm = customer.rfm
  if rfm.recency_days ~= nil then
    bonus = bonus - nbx.clamp(rfm.recency_days, 0, 365) / 365
  end
  local ex = customer.exposures
  bonus = bonus - ex.impressions - 2 * ex.dismisses
  if nbx.contains(offer.placements, session.placement) then
    bonus = bonus + 1
  end
  local score = m + bonus / 1000
  if score ~= score or score == math.huge or score == -math.huge then
    score = 0
  end
  return score, m
end

return policy
