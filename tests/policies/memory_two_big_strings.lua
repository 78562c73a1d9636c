-- expect: fallback memory
-- Two 20 MB strings: string.rep builds in a buffer, then copies, so the
-- first one alone needs 40 MB and fails in a single allocation.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "memory_two_big_strings" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local a = string.rep("a", 2e7)
    local b = string.rep("b", 2e7)
    return #a + #b
  end
  return offer.margin
end

return policy
