// The registering module: importing @lora/loftq runs it (listed in package.json "sideEffects").
