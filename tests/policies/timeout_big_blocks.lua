-- expect: fallback limit
-- Grows table after table to 512 KiB and keeps the last eight, so each is
-- new memory: every 4 KiB page of a new block faults the first time it is
-- written (13 us each in a virtual machine), in copies no tick interrupts.
-- The allocator touches new blocks page by page, looking at the clock, so
-- this ends on time (docs/sandbox.md, "Time"); when memory is short, the
-- memory limit may end it first.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "timeout_big_blocks" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local keep = {}
    for j = 1, 1e9 do
      local t = {}
      for i = 1, 60000 do t[i] = i end
      keep[j % 8] = t
    end
  end
  return offer.margin
end

return policy
