-- expect: fallback timeout
-- Nests pcall inside pcall so each level catches the timeout once.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "timeout_pcall_nested" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local function spin() while true do end end
    while true do
      pcall(pcall, pcall, spin)
    end
  end
  return offer.margin
end

return policy
