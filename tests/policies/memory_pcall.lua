-- expect: fallback memory
-- Catches the memory error with pcall and carries on as if nothing happened.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "memory_pcall" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local ok = pcall(string.rep, 'x', 1e9)
    return offer.margin
  end
  return offer.margin
end

return policy
