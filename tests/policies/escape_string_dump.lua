-- expect: fallback runtime: attempt to call field 'dump'
-- load(string.dump(f)) would load unverified bytecode: string.dump is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_string_dump" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local b = string.dump(function() return 1 end)
  end
  return offer.margin
end

return policy
