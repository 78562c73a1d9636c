-- expect: fallback runtime: attempt to index global 'ffi'
-- Reaches for ffi, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_ffi" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    ffi.cdef('int getpid(void);')
  end
  return offer.margin
end

return policy
