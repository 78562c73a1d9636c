-- expect: load_error: load time limit
-- The top level swallows the timeout with pcall.
while true do pcall(function() while true do end end) end

return { name = "load_pcall_loop", score = function(offer) return offer.margin end }
