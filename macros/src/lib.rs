//! Proc macros for kerac; the code generation itself lives in `kerac-compiler`.
