-- expect: fallback timeout
-- Few VM instructions, each a long C call: inserting at the front of a
-- 60,000-element table shifts every element, in C, where no tick runs.
-- Such calls look at the clock themselves before they start, so this ends
-- within a few milliseconds.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "timeout_big_allocations" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local t = {}
    for i = 1, 60000 do t[i] = i end
    for i = 1, 1e9 do
      table.insert(t, 1, i)
      table.remove(t, 1)
    end
  end
  return offer.margin
end

return policy
