-- expect: fallback runtime: built when the policy loaded
-- Carries one customer's data to the next through a global table: the name
-- is frozen, and so is the table, once the policy has loaded. Every
-- decision that tries falls back; no customer's secret reaches another's.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
STASH = {}

local policy = { name = "leak_global_table" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local seen = STASH.last
    STASH.last = customer.id .. "|" .. tostring(customer.attrs.secret)
    if seen then error("previous customer was " .. seen) end
  end
  return offer.margin
end

return policy
