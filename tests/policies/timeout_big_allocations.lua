-- expect: fallback timeout
-- Few VM instructions, each a long C call: the count hook alone would not
-- look at the clock for hundreds of milliseconds. Big allocations check the
-- deadline themselves, so this ends within a few milliseconds.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "timeout_big_allocations" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    for i = 1, 1e9 do
      local s = string.rep("x", 4e6 + i % 7)
    end
  end
  return offer.margin
end

return policy
