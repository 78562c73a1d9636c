-- expect: fallback timeout
-- A comparator that sorts again, forever. LuaJIT's own table.sort calls the
-- comparator from C, so this would recurse on the C stack; the sandbox's sort
-- is Lua, so it recurses on the bounded Lua stack instead, and each level
-- sorts 50 numbers, so the time limit ends it (test_sandbox.c runs it
-- without a tight limit: then it ends in "stack overflow").
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "c_recursion_sort" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local function cmp(a, b)
      local u = {}
      for i = 1, 50 do u[i] = (i * 37) % 50 end
      table.sort(u, cmp)
      return a < b
    end
    table.sort({ 3, 2, 1 }, cmp)
  end
  return offer.margin
end

return policy
