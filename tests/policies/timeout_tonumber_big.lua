-- expect: fallback timeout
-- The longest string a policy can hold, parsed again and again: each call
-- is a C function of LuaJIT's, where no debug hook runs (with a 12 MB
-- string this ran 3.5 s past a 2 ms limit). Every statement counts the work
-- it does and the policy's own ticks look at the clock.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local a = string.rep(" ", 4000) .. "1"

local policy = { name = "timeout_tonumber_big" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local x
    while true do x = tonumber(a) + tonumber(a:upper()) + #a:rep(1) end
  end
  return offer.margin
end

return policy
