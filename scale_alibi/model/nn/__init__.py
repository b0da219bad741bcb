"""The Scale-ALiBi network: attention, ViT blocks, losses, configs, tile geometry."""
