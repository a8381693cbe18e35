//! PyTorch `.pth` (torch.save zip): data-only reader and writer.
