-- expect: fallback runtime: attempt to index global 'coroutine'
-- coroutine.wrap recursion segfaults LuaJIT: coroutine is not there.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "c_recursion_coroutine" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    local f
    f = coroutine.wrap(function() f() end)
    f()
  end
  return offer.margin
end

return policy
