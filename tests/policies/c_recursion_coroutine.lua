-- expect: fallback runtime: attempt to index global 'coroutine'
-- coroutine.wrap recursion segfaults LuaJIT: coroutine is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "c_recursion_coroutine" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local f
    f = coroutine.wrap(function() f() end)
    f()
  end
  return offer.margin
end

return policy
