"""The enrollment station: photos and an SN key stay here; only scrambled faces leave."""
